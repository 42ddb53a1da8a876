"""Reconstruction quality against the secret: SSIM, PSNR, MSE and label accuracy.

Image metrics come from torchmetrics. When a client update holds ``B > 1`` images, the
reconstruction's order is arbitrary, so each reconstructed image is first matched to a victim
image with an optimal assignment on SSIM (SciPy's ``linear_sum_assignment``).
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def ssim_per_image(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """SSIM of every pair of images ``[N, C, H, W]`` -> ``[N]`` (torchmetrics, Gaussian 11x11)."""
    return structural_similarity_index_measure(a, b, data_range=data_range, reduction="none")


def match_batch(recon: Tensor, truth: Tensor, data_range: float = 1.0) -> Tensor:
    """Permutation ``perm`` so that ``recon[perm[i]]`` is the reconstruction of ``truth[i]``.

    ``recon`` and ``truth`` are ``[B, C, H, W]``; maximises the summed SSIM.
    """
    B = truth.shape[0]
    if B == 1:
        return torch.zeros(1, dtype=torch.long)
    ri, ti = torch.meshgrid(torch.arange(B), torch.arange(B), indexing="ij")
    sim = ssim_per_image(recon[ri.flatten()], truth[ti.flatten()], data_range).view(B, B)
    sim = torch.nan_to_num(sim, nan=-1.0)
    rows, cols = linear_sum_assignment(sim.cpu().numpy(), maximize=True)
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
    first (what a viewer sees). Returns ``ssim``, ``psnr``, ``mse`` as ``[V]`` and ``ssim_images``
    and ``perm`` as ``[V, B]``.
    """
    V, B = truth.shape[:2]
    recon = recon.detach().float().cpu().clamp(0.0, data_range)
    truth = truth.detach().float().cpu()
    perms = torch.stack([match_batch(recon[v], truth[v], data_range) for v in range(V)])
    matched = torch.stack([recon[v][perms[v]] for v in range(V)]).flatten(0, 1)
    flat_truth = truth.flatten(0, 1)
    ssim = ssim_per_image(matched, flat_truth, data_range).view(V, B)
    # PSNR per image needs the reduction dims; MSE per image is one line of arithmetic
    psnr = peak_signal_noise_ratio(matched, flat_truth, data_range=data_range, reduction="none", dim=(1, 2, 3)).view(V, B)
    mse = ((matched - flat_truth) ** 2).flatten(1).mean(1).view(V, B)
    return {"ssim": ssim.mean(1), "psnr": psnr.mean(1), "mse": mse.mean(1), "ssim_images": ssim, "perm": perms}
