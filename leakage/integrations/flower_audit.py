"""A Flower client mod that audits the model the server sent before the client trains on it.

Needs the optional extra: ``pip install "leakage[flower]"``. Flower mods wrap a ``ClientApp``'s handler
(``ClientApp(client_fn=..., mods=[audit_mod(model)])``); this one reads the parameters of every ``train``
message, runs :func:`leakage.audit.run.audit` on them (against the architecture the client runs and the
last round it accepted, and on the client's own batch where given), and then, when a check fails,
stops the round (``on_fail="stop"``: the reply is an error message, as Flower's own mods reply to a
precondition they refuse, and nothing is trained or sent), raises :class:`AuditFailed` (``"raise"``), or
logs a warning and trains (``"warn"``). Every round's result is kept in :attr:`AuditMod.results`.
"""

from __future__ import annotations

import copy
import logging
from typing import Optional, Sequence

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode
from torch import Tensor, nn

from leakage.audit.base import Check, Finding
from leakage.audit.result import AuditResult
from leakage.audit.run import audit
from leakage.integrations.flower import ndarrays_to_state

log = logging.getLogger("leakage.audit")
ON_FAIL = ("stop", "raise", "warn")


class AuditFailed(RuntimeError):
    """Raised by an :class:`AuditMod` with ``on_fail="raise"`` when the received model fails a check."""


class AuditMod:
    """A Flower client mod (module docstring): audit every ``train`` message's parameters first.

    Args:
        model: the architecture the client runs (copied; the received parameters are loaded into the copy):
            its names, shapes and submodules are the pinned architecture.
        batch: the client's own ``(x, y)`` for the checks that run the model on it (D-SNR, single-sample
            units, what would leak); None: only the checks of the weights.
        on_fail: ``stop`` (reply with an error, train nothing), ``raise`` (:class:`AuditFailed`) or ``warn``.
        checks: the checks (default :func:`leakage.audit.run.default_checks`).
    """

    def __init__(self, model: nn.Module, batch: Optional[tuple[Tensor, Tensor]] = None, on_fail: str = "stop",
                 checks: Optional[Sequence[Check]] = None) -> None:
        if on_fail not in ON_FAIL:
            raise ValueError(f"on_fail must be one of {', '.join(ON_FAIL)}, got {on_fail!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be the torch.nn.Module the client runs, got {type(model).__name__}")
        self.model, self.batch, self.on_fail, self.checks = copy.deepcopy(model).cpu(), batch, on_fail, checks
        #: the state the client last accepted (the previous round), compared with the next one
        self.previous: Optional[dict[str, Tensor]] = None
        #: every audited round's result, in order
        self.results: list[AuditResult] = []

    def received(self, msg: Message) -> dict[str, Tensor]:
        """The message's parameters as the model's ``state_dict``: one ArrayRecord, named as the
        ``state_dict`` is or ordered as Flower's NumPy clients send it (a one-line ``ValueError`` otherwise)."""
        records = list(msg.content.array_records.values())
        if len(records) != 1:
            raise ValueError(f"the train message holds {len(records)} ArrayRecords; the audit reads exactly one")
        record = records[0]
        keys, arrays = list(record.keys()), record.to_numpy_ndarrays()
        names = list(self.model.state_dict())
        if set(keys) == set(names):
            arrays = [arrays[keys.index(n)] for n in names]
        return ndarrays_to_state(self.model, arrays, "the received parameters")

    def __call__(self, msg: Message, ctxt: Context, call_next) -> Message:
        if not str(msg.metadata.message_type).startswith("train"):
            return call_next(msg, ctxt)
        try:
            state = self.received(msg)
        except ValueError as err:
            result = AuditResult([Finding("architecture", float("inf"), "fail", str(err))], model="the received parameters")
        else:
            model = copy.deepcopy(self.model)
            model.load_state_dict(state)
            result = audit(model, previous=self.previous, batch=self.batch, architecture=self.model, checks=self.checks)
        self.results.append(result)
        if result.verdict != "fail":
            self.previous = state
            return call_next(msg, ctxt)
        why = "; ".join(f"{f.check}: {f.reason}" for f in result.failed)
        reason = f"leakage audit_mod: {result.headline()} ({why})" + (f"; {result.leak_line()}" if result.leak_line() else "")
        if self.on_fail == "raise":
            raise AuditFailed(reason)
        if self.on_fail == "warn":
            log.warning("%s (training anyway: on_fail='warn')", reason)
            return call_next(msg, ctxt)
        log.error("%s: the round is stopped, nothing is trained or sent", reason)
        return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def audit_mod(model: nn.Module, batch: Optional[tuple[Tensor, Tensor]] = None, on_fail: str = "stop",
              checks: Optional[Sequence[Check]] = None) -> AuditMod:
    """The mod for ``ClientApp(client_fn=..., mods=[audit_mod(model, batch=(x, y))])`` (:class:`AuditMod`)."""
    return AuditMod(model, batch, on_fail, checks)
