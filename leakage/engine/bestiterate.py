"""Each problem's best iterate: the point with the lowest objective an optimiser has evaluated.

An optimiser's last iterate need not be its best: Adam with a large step oscillates or climbs
after it has converged, L-BFGS without a line search can step uphill, a problem can diverge. The
attack therefore keeps, per problem, a copy of the dummies (images and soft labels) at the lowest
loss it has seen, and reports that copy.

The copy is masked on the device (``torch.where`` per problem, no host read, fixed shapes), so it
can be offered at every objective evaluation, L-BFGS's trial points included: what is offered is
always a loss together with the very tensors it was evaluated at.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


class BestIterate:
    """The lowest-loss point of every problem seen so far.

    :meth:`offer` takes per-problem losses ``[P]`` and the point ``[P, ...]`` tensors they were
    evaluated at; a problem's copy is replaced where its loss is finite and lower than the best so
    far (a NaN row, a problem not evaluated or numerically failed, never wins). ``loss`` is NaN for
    a problem that has had no finite loss yet, and ``point`` holds its first offered point then.
    """

    def __init__(self) -> None:
        self.loss: Optional[Tensor] = None
        self.point: tuple[Tensor, ...] = ()

    def reset(self) -> None:
        self.loss, self.point = None, ()

    @property
    def empty(self) -> bool:
        return self.loss is None

    @torch.no_grad()
    def offer(self, loss: Tensor, point: Sequence[Tensor]) -> Tensor:
        """Keep each problem's row of ``point`` where ``loss`` improves on its best; the mask ``[P]``
        of problems that improved."""
        loss = loss.detach()
        if self.loss is None:
            self.loss = torch.full_like(loss, float("nan"))
            self.point = tuple(p.detach().clone() for p in point)
        # finite and not >= the best (a NaN best compares False, so any finite loss beats it)
        better = torch.isfinite(loss) & ~(loss >= self.loss)
        self.loss = torch.where(better, loss, self.loss)
        for kept, now in zip(self.point, point):
            kept.copy_(torch.where(better.view(-1, *([1] * (now.dim() - 1))), now.detach(), kept))
        return better
