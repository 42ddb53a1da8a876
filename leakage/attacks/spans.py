"""The span test behind DAGER: a linear layer's weight gradient lies in the span of the layer's inputs.

For a linear layer ``y = x W`` applied to the rows ``X`` ``[N, d]`` of a batch (one row per token), the weight
gradient of any loss is ``dW = X^T G`` ``[d, d_out]`` (``G`` ``[N, d_out]``: the loss's gradient at the layer's
outputs). Every column of ``dW`` is a combination of the rows of ``X``, and when ``G`` has full row rank
(``N <= d_out`` and nothing degenerate) the column space of ``dW`` is exactly the span of ``X``. So a candidate
input ``x`` was one of the rows of ``X`` only if its distance to that span is ~0: the span test. The span
is read from ``dW``'s singular value decomposition (float64): the left singular vectors whose singular values
exceed ``rank_tol`` times the largest. The test says nothing once the span fills the space (``N >= d``: every
vector passes), and it weakens as ``N`` approaches ``d`` (a wrong vector's distance is about
``sqrt(1 - N / d)`` of its norm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: rows processed at once by :meth:`Span.distances` (a vocabulary of 50,257 embeddings is scanned in chunks)
CHUNK = 8192


@dataclass
class Span:
    """The span of one linear layer's inputs, read from its weight gradient.

    ``basis`` ``[d, r]`` (float64, orthonormal columns) spans the inputs; ``complement`` ``[d, d - r]`` is its
    orthogonal complement; ``singular_values`` are all of ``dW``'s, largest first; ``rank`` is ``r``."""

    basis: Tensor
    complement: Tensor
    singular_values: Tensor

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    @property
    def dim(self) -> int:
        return self.basis.shape[0]

    @property
    def full(self) -> bool:
        """Whether the span fills the whole input space (the test then passes every vector)."""
        return self.rank >= self.dim

    def outside(self, x: Tensor) -> Tensor:
        """The part of each row outside the span, in coordinates that keep norms and inner products: ``x``'s
        components along the complement ``[m, d - r]``, or ``x`` minus its projection ``[m, d]``, whichever is
        cheaper (computed in ``x``'s precision)."""
        if 2 * self.rank < self.dim - self.rank:
            B = self.basis.to(device=x.device, dtype=x.dtype)
            return x - (x @ B) @ B.T
        return x @ self.complement.to(device=x.device, dtype=x.dtype)

    def distances(self, x: Tensor) -> Tensor:
        """Each row's distance to the span relative to its norm ``[m]`` (0: in the span; a random vector:
        about ``sqrt(1 - r / d)``), in chunks of :data:`CHUNK` rows, in float64."""
        out = []
        for chunk in x.detach().double().split(CHUNK):
            out.append(self.outside(chunk).norm(dim=1) / chunk.norm(dim=1).clamp_min(1e-300))
        return torch.cat(out) if out else x.new_zeros(0, dtype=torch.float64)


def input_span(weight_grad: Tensor, rank_tol: float, rows_are_inputs: bool = True) -> Span:
    """The span of a linear layer's inputs from its weight gradient (float64).

    ``rows_are_inputs``: the gradient is ``[d_in, d_out]`` (``transformers``' ``Conv1D``, GPT-2's layers); False
    for ``torch.nn.Linear``'s ``[d_out, d_in]``. The rank counts the singular values above ``rank_tol`` times the
    largest; an all-zero gradient is a one-line ``ValueError``."""
    if weight_grad.dim() != 2:
        raise ValueError(f"a linear layer's weight gradient is a matrix, got shape {tuple(weight_grad.shape)}")
    g = weight_grad.detach().to("cpu", torch.float64)
    if not rows_are_inputs:
        g = g.T
    if not torch.isfinite(g).all():
        raise ValueError("the shared weight gradient has non-finite entries: nothing to read a span from")
    # the left singular vectors and values of g, from the eigendecomposition of g g^T ([d, d], cheaper than
    # g's SVD when d_out > d; float64 keeps singular values down to ~1e-7 of the largest)
    evals, U = torch.linalg.eigh(g @ g.T)
    S, order = evals.flip(0).clamp_min(0).sqrt(), torch.arange(g.shape[0] - 1, -1, -1)
    U = U[:, order]
    if S.numel() == 0 or S[0] <= 0:
        raise ValueError("the shared weight gradient is all zeros: it carries no span (was the update clipped to 0?)")
    r = int((S > rank_tol * S[0]).sum())
    return Span(basis=U[:, :r].contiguous(), complement=U[:, r:].contiguous(), singular_values=S)


def independent_rank(rows: Tensor, rank_tol: float) -> int:
    """The numerical rank of a set of rows (float64 SVD; singular values above ``rank_tol`` times the largest)."""
    if rows.numel() == 0:
        return 0
    S = torch.linalg.svdvals(rows.detach().to("cpu", torch.float64))
    return int((S > rank_tol * S[0]).sum()) if S[0] > 0 else 0


@torch.no_grad()
def layernorm_distances(ln: torch.nn.LayerNorm, tokens: Tensor, offsets: Tensor, span: Span) -> Tensor:
    """The distance to ``span`` of ``LayerNorm(tokens[v] + offsets[p])`` for every token embedding ``[V, d]`` and
    every offset ``[n, d]`` (a position's embedding, plus a segment embedding where there is one) ``[n, V]``
    (float64), without forming the ``n x V`` inputs.

    ``LayerNorm(e + q) = s (a + b) + beta`` with ``a = gamma * centred(e)``, ``b = gamma * centred(q)`` and the
    scalar ``s = 1 / sqrt(var(e + q) + eps)``; the part outside the span is ``s (Ra + Rb) + R beta``, whose
    squared norm is a sum of inner products that ``R a`` (one pass over the vocabulary) and ``R b``,
    ``R beta`` give for every offset at once."""
    d = span.dim
    gamma = ln.weight.double().cpu() if ln.weight is not None else torch.ones(d, dtype=torch.float64)
    beta = ln.bias.double().cpu() if ln.bias is not None else torch.zeros(d, dtype=torch.float64)
    Q = offsets.double().cpu()
    Qc = Q - Q.mean(1, keepdim=True)
    b, rb, rbeta = gamma * Qc, span.outside(gamma * Qc), span.outside(beta[None])[0]
    out = []
    for E in tokens.split(CHUNK):
        E = E.double().cpu()
        Ec = E - E.mean(1, keepdim=True)
        a = gamma * Ec
        ra = span.outside(a)
        s2 = 1.0 / ((Ec.pow(2).sum(1, keepdim=True) + 2 * Ec @ Qc.T + Qc.pow(2).sum(1)) / d + ln.eps)  # [m, n]
        s = s2.sqrt()
        inside = s2 * (ra.pow(2).sum(1, keepdim=True) + 2 * ra @ rb.T + rb.pow(2).sum(1)) \
            + 2 * s * ((ra @ rbeta)[:, None] + rb @ rbeta) + rbeta.pow(2).sum()
        norm = s2 * (a.pow(2).sum(1, keepdim=True) + 2 * a @ b.T + b.pow(2).sum(1)) \
            + 2 * s * ((a @ beta)[:, None] + b @ beta) + beta.pow(2).sum()
        out.append((inside.clamp_min(0) / norm.clamp_min(1e-300)).sqrt().T)
    return torch.cat(out, dim=1)
