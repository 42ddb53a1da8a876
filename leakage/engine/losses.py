"""Gradient-matching distances and image priors, batched over a leading problem dimension."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

DISTANCES = ("l2", "cosine", "tag")
#: the weight of the L1 term of TAG's distance (Deng et al., 2021, as breaching runs it): L2 + TAG_ALPHA x L1
TAG_ALPHA = 0.1


def _per_problem(t: Tensor) -> Tensor:
    """The sum of each problem's entries: ``[P, ...] -> [P]`` (``[P]`` itself for a scalar parameter)."""
    return t.reshape(t.shape[0], -1).sum(1)


def squared_norms(observed: Sequence[Tensor]) -> Tensor:
    """Each problem's squared L2 norm over all its parameters ``[P]`` (the constant of the cosine
    distance, which :func:`gradient_distance` takes precomputed as ``observed_sq_norm``)."""
    return sum(_per_problem(o * o) for o in observed)


def gradient_distance(dummy: Sequence[Tensor], observed: Sequence[Tensor], kind: str = "l2",
                      observed_sq_norm: Optional[Tensor] = None) -> Tensor:
    """Distance between per-problem gradients, one value per problem.

    Every tensor has a leading problem dimension ``P``; the result has shape ``[P]``.

    - ``l2``: sum of squared differences over every parameter (DLG, Zhu et al. 2019).
    - ``cosine``: ``1 - <g, g_obs> / (|g| |g_obs|)`` over all parameters together
      (Inverting Gradients, Geiping et al. 2020). ``observed_sq_norm`` (``[P]``, from
      :func:`squared_norms` of ``observed``) saves a pass over the observed gradients, which do not
      change from one evaluation to the next; the result is the same to the bit.
    - ``tag``: TAG's distance (Deng et al., 2021): the squared L2 distance plus :data:`TAG_ALPHA` times
      the L1 distance, over every parameter.
    """
    if kind == "l2":
        return sum(_per_problem((g - o) ** 2) for g, o in zip(dummy, observed))
    if kind == "tag":
        return sum(_per_problem((g - o) ** 2) + TAG_ALPHA * _per_problem((g - o).abs()) for g, o in zip(dummy, observed))
    if kind == "cosine":
        dot = sum(_per_problem(g * o) for g, o in zip(dummy, observed))
        gn = sum(_per_problem(g * g) for g in dummy)
        on = squared_norms(observed) if observed_sq_norm is None else observed_sq_norm
        return 1 - dot / (gn.sqrt() * on.sqrt()).clamp_min(1e-12)
    raise ValueError(f"unknown distance {kind!r}; choose one of {', '.join(DISTANCES)}")


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic total variation (mean absolute neighbour difference) per problem.

    ``x`` is ``[P, B, C, H, W]``; the result has shape ``[P]``.
    """
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dh + dw
