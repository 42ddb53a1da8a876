"""Per-problem budgets that adapt: stop a problem when its loss has converged or stalled.

A run's ``trainer.max_steps`` is a cap; :class:`StoppingRule` decides, after every attack step and
for every problem on its own, whether it is done:

- **converged**: its matching loss is at most ``stop_loss``, or at most ``stop_relative`` times the
  observation's own scale (given to :meth:`StoppingRule.update`; the attack gives the squared norm of
  the observed gradient for the ``l2`` distance, 1 for ``cosine``, which is relative already), or
  changed by less than ``stop_change`` (relative) over the last step;
- **stalled**: its best loss improved by less than ``stall_improvement`` (relative) over the last
  ``stall_steps`` steps.

A stopped problem stays stopped: the attack stops optimising it (L-BFGS no longer evaluates it, so
it costs nothing; Adam's rows are held where they stopped) and the run ends once every problem has
stopped, failed or reached a fixed point. Every decision is a mask on the device (no host read).
Every setting at 0 turns its test off; all at 0 (the default) is a fixed budget of ``max_steps``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from leakage.engine import checks
class StoppingRule:
    """The stopping tests of ``P`` problems, fed the per-problem losses ``[P]`` after every step."""

    def __init__(self, stop_loss: float = 0.0, stop_change: float = 0.0, stall_steps: int = 0,
                 stall_improvement: float = 0.0, stop_relative: float = 0.0) -> None:
        for name, value in (("stop_loss", stop_loss), ("stop_change", stop_change),
                            ("stall_improvement", stall_improvement), ("stop_relative", stop_relative)):
            checks.float32_number(name, value)
        if stop_loss < 0:
            raise ValueError(f"stop_loss must be >= 0 (0: off), got {stop_loss}")
        if not 0 <= stop_relative < 1:
            raise ValueError(f"stop_relative is a fraction of each problem's loss scale: it must be in [0, 1) "
                             f"(0: off), got {stop_relative}")
        for name, value in (("stop_change", stop_change), ("stall_improvement", stall_improvement)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} is a relative change: it must be in [0, 1) (0: off), got {value}")
        if isinstance(stall_steps, bool) or not isinstance(stall_steps, int) or stall_steps < 0:
            raise ValueError(f"stall_steps must be an integer >= 0 (0: off), got {stall_steps!r}")
        if stall_improvement > 0 and stall_steps == 0:
            raise ValueError(f"stall_improvement {stall_improvement} needs stall_steps >= 1: the number of steps "
                             "over which a problem must improve by that much")
        self.stop_loss, self.stop_change = float(stop_loss), float(stop_change)
        self.stop_relative = float(stop_relative)
        self.stall_steps, self.stall_improvement = stall_steps, float(stall_improvement)
        self.stopped: Optional[Tensor] = None  # [P]: problems this rule has stopped
        self.stopped_at: Optional[Tensor] = None  # [P]: the step after which each stopped (-1: running)
        self._last: Optional[Tensor] = None  # [P]: each problem's loss after the previous step
        self._best: Optional[Tensor] = None  # [K + 1, P]: best loss so far after each of the last K + 1 steps
        self._held: Optional[list[Tensor]] = None  # rows of stopped problems, where they stopped
        self._steps = 0

    def reset(self) -> None:
        """Forget every problem (a new run)."""
        self.stopped = self.stopped_at = self._last = self._best = self._held = None
        self._steps = 0

    @property
    def enabled(self) -> bool:
        return self.stop_loss > 0 or self.stop_change > 0 or self.stall_steps > 0 or self.stop_relative > 0

    def update(self, losses: Tensor, scale: Optional[Tensor] = None) -> Tensor:
        """Record the losses ``[P]`` after a step; the mask ``[P]`` of problems stopped so far.

        ``scale`` (``[P]`` or a number): each problem's own loss scale, which ``stop_relative`` is a
        fraction of; needed when ``stop_relative`` is set."""
        if self.stop_relative > 0 and scale is None:
            raise ValueError("stop_relative needs each problem's loss scale: StoppingRule.update(losses, scale)")
        losses = losses.detach().to(torch.float64)
        if self.stopped is None or self.stopped.shape != losses.shape:
            self.stopped = torch.zeros_like(losses, dtype=torch.bool)
            self.stopped_at = torch.full_like(losses, -1, dtype=torch.long)
        finite = torch.isfinite(losses)
        now = torch.where(finite, losses, torch.full_like(losses, float("inf")))
        self._steps += 1
        new = torch.zeros_like(self.stopped)
        if self.stop_loss > 0:
            new |= now <= self.stop_loss
        if self.stop_relative > 0:
            new |= now <= self.stop_relative * torch.as_tensor(scale, dtype=torch.float64, device=now.device)
        if self.stop_change > 0 and self._last is not None:
            new |= finite & ((self._last - now).abs() < self.stop_change * self._last)
        self._last = now
        if self.stall_steps > 0:
            best = now if self._best is None else torch.minimum(self._best[-1], now)
            self._best = best[None] if self._best is None else torch.cat([self._best, best[None]])[-(self.stall_steps + 1):]
            if self._steps > self.stall_steps:
                then = self._best[0]
                new |= finite & (best >= (1 - self.stall_improvement) * then)
        self.stopped_at = torch.where(new & ~self.stopped, self._steps, self.stopped_at)
        self.stopped = self.stopped | new
        return self.stopped

    @torch.no_grad()
    def hold(self, params: list[Tensor], moved: bool) -> None:
        """Keep stopped problems' rows of ``params`` where they stopped: record them before a step
        (``moved`` False), put them back after it (``moved`` True). For optimizers that move every row
        (Adam's momentum); L-BFGS leaves stopped problems alone itself."""
        if self.stopped is None:
            return
        if not moved:
            self._held = [p.detach().clone() for p in params]
            return
        for p, old in zip(params, self._held or []):
            p.copy_(torch.where(self.stopped.to(p.device).view(-1, *([1] * (p.dim() - 1))), old, p))
