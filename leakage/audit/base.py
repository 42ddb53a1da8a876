"""What an audit reads and what a check says: the :class:`Received` model (with the client's own
batch and what the model is compared against) and a check's :class:`Finding`.

A check (:class:`Check`) is one class, like a defense: it reads the received model, answers one
question with a score (higher is more suspicious) and turns the score into a verdict by its own two
thresholds, ``warn`` and ``fail``, which it states and which were calibrated on honest models (random
initialisations of the built-in models and a few SGD steps from them; each check's docstring gives the
values measured). A check that has nothing to read (no previous round given, no batch, no fully
connected first layer) says so: verdict ``skipped``, never ``pass``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

VERDICTS = ("pass", "warn", "fail", "skipped")


@dataclass
class Finding:
    """One check's answer: its ``score`` (higher is more suspicious; NaN when skipped), the verdict
    (``pass``, ``warn``, ``fail`` or ``skipped``), a one-line ``reason`` and the numbers behind it."""

    check: str
    score: float
    verdict: str
    reason: str
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        score = None if math.isnan(self.score) else (self.score if math.isfinite(self.score) else str(self.score))
        return {"check": self.check, "score": score, "verdict": self.verdict, "reason": self.reason,
                "details": self.details}


@dataclass
class Received:
    """Everything an audit reads: the received weights ``state`` (``{name: tensor}``), the received
    ``model`` when it runs (None when its weights do not fit the architecture the client runs), the
    previous round's weights, a pinned architecture (``{name: shape}``, and the pinned module's
    ``{submodule path: class name}`` where known), the client's batch ``x`` ``[B, *input_shape]`` with
    labels ``y`` ``[B]``, and why the model does not run (``unrunnable``)."""

    state: dict[str, Tensor]
    model: Optional[nn.Module] = None
    previous: Optional[dict[str, Tensor]] = None
    architecture: Optional[dict[str, tuple]] = None
    modules: Optional[dict[str, str]] = None
    x: Optional[Tensor] = None
    y: Optional[Tensor] = None
    unrunnable: str = ""

    @property
    def input_shape(self) -> Optional[tuple]:
        return None if self.x is None else tuple(self.x.shape[1:])

    def weights(self, min_fan_in: int = 1) -> Iterator[tuple[str, Tensor, Optional[Tensor]]]:
        """Every layer's weight as rows ``[units, fan-in]`` (a linear layer's rows, a convolution's
        filters flattened) with its bias ``[units]`` or None, in ``state`` order; fan-in at least ``min_fan_in``."""
        for name, w in self.state.items():
            if not name.endswith("weight") or w.dim() < 2 or not w.is_floating_point():
                continue
            prefix = name[: -len("weight")]
            bias = self.state.get(prefix + "bias")
            rows = w.detach().float().flatten(1)
            if rows.shape[1] >= min_fan_in:
                yield prefix.rstrip("."), rows, None if bias is None or bias.shape != rows.shape[:1] else bias.float()


class Check:
    """One question an audit asks of the received model (see the module docstring): subclasses set
    ``name`` and implement :meth:`run`; the verdict is ``fail`` at ``score >= fail``, ``warn`` at
    ``score >= warn``, else ``pass``."""

    name = ""
    #: what it reads beyond the weights: ``batch`` (the client's batch and a model that runs)
    needs: Sequence[str] = ()

    def __init__(self, warn: float, fail: float) -> None:
        for what, value in (("warn", warn), ("fail", fail)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"{type(self).__name__}: {what} must be a number, got {value!r}")
        if warn > fail:
            raise ValueError(f"{type(self).__name__}: warn ({warn}) must not exceed fail ({fail})")
        self.warn, self.fail = float(warn), float(fail)

    def run(self, received: Received) -> Finding:
        raise NotImplementedError

    def verdict(self, score: float) -> str:
        if math.isnan(score):
            return "skipped"
        return "fail" if score >= self.fail else "warn" if score >= self.warn else "pass"

    def found(self, score: float, reason: str, **details: Any) -> Finding:
        return Finding(self.name, float(score), self.verdict(float(score)), reason, _plain(details))

    def skipped(self, reason: str) -> Finding:
        return Finding(self.name, float("nan"), "skipped", reason, {})

    def settings(self) -> dict:
        return {"warn": self.warn, "fail": self.fail}


def _plain(value: Any) -> Any:
    """``value`` as JSON takes it: tensors and numpy numbers as Python numbers, tuples as lists."""
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def ratio(top: float, rest: float) -> float:
    """``top / rest``, infinite where the rest is zero and the top is not (one unit holds everything)."""
    if rest > 0:
        return top / rest
    return math.inf if top > 0 else 0.0


def row_snr(norms: Tensor) -> tuple[float, int]:
    """The largest of ``norms`` over the sum of the others (SEER's signal-to-noise ratio) and its index."""
    norms = norms.double()
    i = int(norms.argmax())
    return ratio(float(norms[i]), float(norms.sum() - norms[i])), i


def shapes(state: Mapping[str, Tensor]) -> dict[str, tuple]:
    """``{name: shape}`` of a state_dict."""
    return {k: tuple(v.shape) for k, v in state.items()}


def module_classes(model: nn.Module) -> dict[str, str]:
    """``{submodule path: class name}`` of every submodule that holds parameters or buffers of its own."""
    return {n: type(m).__name__ for n, m in model.named_modules()
            if n and (any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)))}


def float_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu() for k, v in state.items() if isinstance(v, Tensor)}


def first_weight(received: Received) -> Optional[tuple[str, Tensor, Optional[Tensor]]]:
    return next(received.weights(), None)


def as_batch(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The client's batch checked: ``x`` ``[B, *input_shape]`` floating point, ``y`` ``[B]`` class indices."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError("the client's batch must be tensors: inputs x [B, *input_shape] and labels y [B]")
    if y.dim() != 1 or x.dim() < 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"the client's batch does not fit: x of shape {tuple(x.shape)} and labels of shape "
                         f"{tuple(y.shape)}; give x [B, *input_shape] and y [B] with B >= 1")
    if not x.is_floating_point():
        raise ValueError(f"the client's inputs must be floating point, got {x.dtype}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"the client's labels must be integer class indices, got {y.dtype}")
    return x.detach().cpu().float(), y.detach().cpu().long()
