"""Reconstruction quality against the secret: SSIM, PSNR, MSE and label accuracy.

Image metrics come from torchmetrics. When a client update holds ``B > 1`` images, the
reconstruction's order is arbitrary, so each reconstructed image is first matched to a victim
image by an optimal assignment (SciPy's ``linear_sum_assignment``) on the squared pixel distance,
and only the ``B`` matched pairs are scored. Memory stays linear in ``B``: the cost is a ``[B, B]``
matrix built a block of rows at a time (``torch.cdist``), never ``B^2`` image pairs (SSIM of every
pair cost about 80 GB of memory and minutes of time at B = 512).
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

#: rows of the ``[B, B]`` matching cost computed at once (bounds cdist's work space)
COST_ROWS = 256
#: images scored by SSIM at once (torchmetrics holds about a dozen copies of the batch it scores)
SCORE_CHUNK = 64


def ssim_per_image(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """SSIM of every pair of images ``[N, C, H, W]`` -> ``[N]`` (torchmetrics, Gaussian 11x11)."""
    return structural_similarity_index_measure(a, b, data_range=data_range, reduction="none")


def pixel_cost(recon: Tensor, truth: Tensor, rows: int = COST_ROWS) -> Tensor:
    """Squared pixel distance ``[B, B]`` (float64) of every reconstruction (rows) to every true image
    (columns), ``[B, *sample_shape]`` each, computed ``rows`` reconstructions at a time."""
    r = recon.detach().flatten(1).double()
    t = truth.detach().flatten(1).double()
    cost = torch.empty(r.shape[0], t.shape[0], dtype=torch.float64, device=r.device)
    for i in range(0, r.shape[0], rows):
        cost[i:i + rows] = torch.cdist(r[i:i + rows], t).pow_(2)
    return cost


def match_batch(recon: Tensor, truth: Tensor) -> Tensor:
    """Permutation ``perm`` so that ``recon[perm[i]]`` is the reconstruction of ``truth[i]``.

    ``recon`` and ``truth`` are ``[B, C, H, W]``; minimises the summed squared pixel distance of the
    pairs (:func:`pixel_cost`). A reconstruction holding NaN costs more than any finite pair."""
    B = truth.shape[0]
    if B == 1:
        return torch.zeros(1, dtype=torch.long)
    cost = pixel_cost(recon, truth)
    finite = torch.isfinite(cost)
    if not bool(finite.all()):
        worst = float(cost[finite].max()) + 1.0 if bool(finite.any()) else 1.0
        cost = torch.where(finite, cost, torch.full_like(cost, worst))
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    perm = torch.empty(B, dtype=torch.long)
    perm[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return perm


def label_accuracy(recovered: Tensor, true: Tensor) -> Tensor:
    """Share of the batch's labels recovered, as multisets (order-free). ``[V, B]`` -> ``[V]``."""
    k = int(max(recovered.max(), true.max())) + 1
    rc = torch.nn.functional.one_hot(recovered.long(), k).sum(1)
    tc = torch.nn.functional.one_hot(true.long(), k).sum(1)
    return torch.minimum(rc, tc).sum(1).float() / true.shape[1]


def reconstruction_metrics(recon: Tensor, truth: Tensor, data_range: float = 1.0) -> dict[str, Tensor]:
    """Per-victim mean SSIM, PSNR and MSE after matching, plus per-image SSIM.

    ``recon`` and ``truth`` are ``[V, B, C, H, W]``. Reconstructions are clamped to the data range
    first (what a viewer sees), then matched (:func:`match_batch`); only the matched pairs are
    scored, :data:`SCORE_CHUNK` images at a time. Returns ``ssim``, ``psnr``, ``mse`` as ``[V]`` and
    ``ssim_images`` and ``perm`` as ``[V, B]``.
    """
    V, B = truth.shape[:2]
    recon = recon.detach().float().cpu().clamp(0.0, data_range)
    truth = truth.detach().float().cpu()
    perms = torch.stack([match_batch(recon[v], truth[v]) for v in range(V)])
    matched = torch.stack([recon[v][perms[v]] for v in range(V)]).flatten(0, 1)
    flat_truth = truth.flatten(0, 1)
    ssim, psnr = [], []
    for i in range(0, V * B, SCORE_CHUNK):
        a, b = matched[i:i + SCORE_CHUNK], flat_truth[i:i + SCORE_CHUNK]
        ssim.append(ssim_per_image(a, b, data_range))
        # PSNR per image needs the reduction dims
        psnr.append(peak_signal_noise_ratio(a, b, data_range=data_range, reduction="none", dim=(1, 2, 3)))
    ssim = torch.cat(ssim).view(V, B)
    psnr = torch.cat(psnr).view(V, B)
    mse = ((matched - flat_truth) ** 2).flatten(1).mean(1).view(V, B)  # per image: one line of arithmetic
    return {"ssim": ssim.mean(1), "psnr": psnr.mean(1), "mse": mse.mean(1), "ssim_images": ssim, "perm": perms}
