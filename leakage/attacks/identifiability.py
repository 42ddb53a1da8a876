"""How much of a client's batch its shared gradient can reveal at all: the Jacobian rank.

The shared update is a function ``g(x)`` of the batch ``x`` (``B x C x H x W`` unknowns). Near
the victims' batch, gradient matching can only pin down the directions the Jacobian
``dg/dx`` sees: its rank is the number of independent equations the update gives about the
batch, and ``unknowns - rank`` directions of the batch change nothing in the update (to first
order), whatever the attack. Counting gradient entries over-states this: the last linear layer's
weight gradient ``sum_i g_i h_i^T`` has rank at most ``B``, and a stride-1 layer's gradient adds
nothing once its output is known.

This is an analysis of the victims' own point, so it reads the secret batch (like the metrics); the
attack never calls it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import jvp, vmap

from leakage.federated.client import per_problem_gradients


@dataclass
class JacobianRank:
    """Result of :func:`gradient_jacobian_rank`."""

    entries: int  # gradient entries in one update
    unknowns: int  # input values of the batch
    rank: int  # singular values above ``rtol`` x the largest
    singular_values: Tensor  # all of them, descending (float64)
    rtol: float

    @property
    def invisible(self) -> int:
        """Directions of the batch the update does not see (to first order)."""
        return self.unknowns - self.rank

    @property
    def weakest(self) -> float:
        """Smallest counted singular value over the largest (how weakly the last seen direction is seen)."""
        s = self.singular_values
        return float(s[self.rank - 1] / s[0]) if self.rank else 0.0


def gradient_jacobian(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 256) -> Tensor:
    """``[entries, unknowns]`` Jacobian of the shared gradient (mean cross-entropy over the batch
    ``x`` ``[B, C, H, W]`` with labels ``y`` ``[B]``) with respect to the batch, in float64.

    Columns come from forward-over-reverse products (``torch.func.jvp`` of the client's
    :func:`~leakage.federated.client.per_problem_gradients`), ``chunk`` at a time under ``vmap``
    (``torch.func.jacfwd`` would build all ``unknowns`` columns at once).
    """
    model = copy.deepcopy(model).double()  # the caller's model keeps its dtype
    x = x.detach().double()

    def update(flat: Tensor) -> Tensor:  # the client's update, as one problem of one batch
        g = per_problem_gradients(model, flat.view(1, *x.shape), y[None])
        return torch.cat([t.flatten() for t in g.values()])

    flat = x.flatten()
    n = flat.numel()
    cols = []
    for start in range(0, n, chunk):
        basis = torch.zeros(min(chunk, n - start), n, dtype=flat.dtype, device=flat.device)
        basis[torch.arange(basis.shape[0]), torch.arange(start, start + basis.shape[0])] = 1
        cols.append(vmap(lambda v: jvp(update, (flat,), (v,))[1])(basis))
    return torch.cat(cols).T


def gradient_jacobian_rank(model: nn.Module, x: Tensor, y: Tensor, rtol: float = 1e-7, chunk: int = 256) -> JacobianRank:
    """Numerical rank of :func:`gradient_jacobian`: singular values above ``rtol`` x the largest.

    The default ``rtol = 1e-7`` is about float32's precision: a client sends float32 gradients, so
    a direction seen less than that is below the rounding of the update itself. Singular values
    come from the eigenvalues of the smaller Gram matrix (``J^T J`` or ``J J^T``) in float64,
    which resolves them down to about 1e-8 x the largest, several times faster than an SVD.
    """
    J = gradient_jacobian(model, x, y, chunk)
    m, n = J.shape
    gram = J.T @ J if n <= m else J @ J.T
    sv = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).sqrt()
    rank = int((sv > rtol * sv[0]).sum()) if sv[0] > 0 else 0
    return JacobianRank(entries=m, unknowns=n, rank=rank, singular_values=sv, rtol=rtol)
