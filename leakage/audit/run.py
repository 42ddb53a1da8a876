"""``leakage.audit``: the client's check of the model it received, from Python (``leakage audit`` runs it too).

::

    import leakage
    result = leakage.audit(received_model, previous=last_round_state_dict, batch=(x, y))
    print(result)                       # the table: one row per check, then what would leak
    result.write("audit")               # metrics.json and audit.html

The checks are objects (:data:`default_checks`); pass ``checks=[...]`` to choose them or change their
thresholds (``TrapWeights(fail=0.2)``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from leakage.audit.base import Check, Received, _plain, as_batch, float_state, module_classes, shapes
from leakage.audit.batchchecks import DSNR, SingleSampleUnits
from leakage.audit.leaks import WhatLeaks
from leakage.audit.result import AuditResult
from leakage.audit.rounds import ReplacedLayers
from leakage.audit.structure import ArchitectureDrift, ClassTargeted, ImprintRows, TransmitSNR, TrapWeights
from leakage.engine.files import read_tensors
from leakage.engine.models import model_name

Weights = Union[nn.Module, Mapping[str, Tensor], str, Path]


def default_checks() -> list[Check]:
    """Every check with its calibrated thresholds, in the order the table shows them."""
    return [ArchitectureDrift(), ReplacedLayers(), ImprintRows(), TrapWeights(), ClassTargeted(), TransmitSNR(), DSNR(),
            SingleSampleUnits(), WhatLeaks()]


def read_state(value: Weights, what: str) -> dict[str, Tensor]:
    """A state_dict from a module, a mapping or a file (``.safetensors``, or a ``.pt`` read with
    ``torch.load(weights_only=True)``: never unpickled); a Lightning checkpoint's ``state_dict`` is taken."""
    if isinstance(value, nn.Module):
        return float_state(value.state_dict())
    if isinstance(value, (str, Path)):
        value = read_tensors(value, what)
        if isinstance(value, dict) and isinstance(value.get("state_dict"), dict):
            value = value["state_dict"]
    if not isinstance(value, Mapping) or not value or not all(isinstance(v, Tensor) for v in value.values()):
        raise ValueError(f"{what} must be a state_dict (parameter name -> tensor), got {type(value).__name__}")
    return float_state(value)


def _architecture(value: object) -> tuple[dict[str, tuple], Optional[dict[str, str]]]:
    """A pinned architecture: ``{name: shape}`` (and the submodules' classes when it is a module)."""
    if isinstance(value, nn.Module):
        return shapes(value.state_dict()), module_classes(value)
    if isinstance(value, Mapping) and value and all(isinstance(v, (tuple, list, torch.Size)) for v in value.values()):
        return {str(k): tuple(v) for k, v in value.items()}, None
    return shapes(read_state(value, "the pinned architecture")), None  # type: ignore[arg-type]


def audit(model: Union[nn.Module, Mapping[str, Tensor]], previous: Optional[Weights] = None,
          batch: Optional[tuple[Tensor, Tensor]] = None, architecture: Optional[object] = None,
          checks: Optional[Sequence[Check]] = None) -> AuditResult:
    """Audit the model a server sent (the module docstring).

    Args:
        model: the received model (an ``nn.Module`` with the received weights: every check runs), or its
            state_dict alone (the weight checks run; those on the batch are skipped).
        previous: the previous round's weights (a module, a state_dict or a weights file): the architecture
            check compares names and shapes, and the replaced-layers check finds layers replaced rather than trained.
        batch: the client's own ``(x, y)``, ``x`` ``[B, *input_shape]``, ``y`` ``[B]``: D-SNR, single-sample
            units and what would leak run on it, on this machine (nothing is sent anywhere).
        architecture: the architecture the client pinned: a module (names, shapes and submodule classes), a
            ``{name: shape}`` mapping or a weights file. It takes precedence over ``previous`` for names and shapes.
        checks: the checks to run (default :func:`default_checks`).

    Returns an :class:`~leakage.audit.result.AuditResult`; ``result.verdict`` is ``fail`` when a check fails.
    """
    checks = default_checks() if checks is None else list(checks)
    for c in checks:
        if not isinstance(c, Check):
            raise TypeError(f"checks must be leakage.audit checks (Check subclasses), got {type(c).__name__}")
    module = model if isinstance(model, nn.Module) else None
    state = read_state(model, "the received model")
    received = Received(state, model=None, previous=None if previous is None else read_state(previous, "the previous round's weights"))
    if architecture is not None:
        received.architecture, received.modules = _architecture(architecture)
    if module is not None:
        received.model = copy.deepcopy(module).cpu().float().eval()
        for p in received.model.parameters():
            p.requires_grad_(False)
    else:
        received.unrunnable = "the received weights alone, no model that runs them: the batch checks need one"
    if batch is not None:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError("batch must be the client's (x, y): inputs [B, *input_shape] and labels [B]")
        received.x, received.y = as_batch(*batch)
        if received.model is not None:
            _check_runs(received)
    findings = [c.run(received) for c in checks]
    settings = {c.name: _plain(c.settings()) for c in checks}
    return AuditResult(findings, model=model_name(module) if module is not None else "a state_dict", settings=settings)


def _check_runs(received: Received) -> None:
    """The batch fits the model: one forward pass gives logits, and the labels are among them."""
    from leakage.engine.models import num_logits

    k = num_logits(received.model, received.input_shape, "the received model")
    bad = (received.y < 0) | (received.y >= k)
    if bool(bad.any()):
        raise ValueError(f"the client's labels must be class indices in [0, {k}) for the model's {k} logits, "
                         f"got {int(received.y[bad][0])}")
