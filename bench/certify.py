"""What the closed-form certificate says on clean and defended updates (leakage.attacks.closedform).

    python bench/certify.py

One FedSGD update per row, on the first B bundled MNIST test images, attacked through
``leakage.invert``: the relative residual ``|g(x, y) - g_obs| / |g_obs|`` of the whole update with the
recovered batch (with the labels as restored, or paired to the slots where that certifies it), whether the victim is
certified exact (every slot read off the update and the residual <= CERTIFIED_RESIDUAL), and the
images back to SSIM >= 0.99 (matched by the Hungarian algorithm on l2). The clean rows give the
float32 floor the tolerance stands above; the defended rows what a defense leaves. Prints a Markdown
table.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

import leakage
from leakage.attacks.closedform import CERTIFIED_RESIDUAL
from leakage.federated.defenses import GaussianNoise, NormClip, TopK, secure_aggregation
from leakage.engine.metrics import ssim_per_image
from leakage.engine.models import build_model

SHAPE = (1, 28, 28)
MNIST = {"feature_mean": 0.1239, "feature_std": 0.0407}  # the imprint's bins for MNIST's brightness


def back(recon: torch.Tensor, truth: torch.Tensor) -> int:
    """Images of ``truth`` ``[B, ...]`` that a slot of ``recon`` holds to SSIM >= 0.99."""
    rows, cols = linear_sum_assignment(torch.cdist(truth.flatten(1), recon.flatten(1)).numpy())
    return int((ssim_per_image(recon[cols].clamp(0, 1), truth[rows]) >= 0.99).sum())


def row(name: str, model, server, update, x, attack: str, batch: int = 0) -> str:
    """One update of ``x`` (or, with ``batch``, consecutive updates of ``batch`` images each)."""
    B = batch or x.shape[0]
    result = leakage.invert(model, update, SHAPE, 10, batch_size=B, attack=attack, server=server)
    rel = result.module.relative_residual
    images = back(result.images.flatten(0, 1), x)
    return (f"| {name} | {B} | {' / '.join(f'{float(r):.1e}' for r in rel)} | "
            f"{int(result.exact.sum())}/{result.exact.numel()} | {images}/{x.shape[0]} |")


def main() -> None:
    print(f"certified: every slot read off the update and relative residual <= {CERTIFIED_RESIDUAL:g}\n")
    print("| update | B | relative residual | certified exact | images back (SSIM >= 0.99) |")
    print("|---|---|---|---|---|")
    lenet = build_model("lenet", SHAPE, 10, seed=1234)
    for B in (8, 16):
        server = leakage.ImprintServer(num_bins=256, **MNIST)
        sent = server.send(lenet, SHAPE)
        x, y = leakage.bundled_images("mnist", range(B))
        print(row("imprint, 256 bins, clean", sent, server, leakage.client_update(sent, x, y), x, "imprint"))
    server = leakage.ImprintServer(num_bins=256, **MNIST)
    sent = server.send(lenet, SHAPE)
    x, y = leakage.bundled_images("mnist", range(16))
    clean = leakage.client_update(sent, x, y)
    norm = float(sum(v.double().pow(2).sum() for v in clean.values()).sqrt())
    for name, defense in (("noise 1e-6", GaussianNoise(1e-6)), ("noise 0.1", GaussianNoise(0.1)),
                          ("top-k 0.3", TopK(0.3)), ("clip to 0.999 of the norm", NormClip(0.999 * norm))):
        print(row(f"imprint, 256 bins, {name}", sent, server, leakage.client_update(sent, x, y, defenses=[defense]),
                  x, "imprint"))
    small = leakage.ImprintServer(num_bins=16, **MNIST)  # as many bins as images: noise fills them all
    sent16 = small.send(lenet, SHAPE)
    print(row("imprint, 16 bins, noise 0.1", sent16, small,
              leakage.client_update(sent16, x, y, defenses=[GaussianNoise(0.1)]), x, "imprint"))
    halves = [leakage.client_update(sent, x[i:i + 8], y[i:i + 8]) for i in (0, 8)]
    masked, _ = secure_aggregation({k: torch.stack([h[k] for h in halves]) for k in halves[0]}, clients=2)
    print(row("imprint, 256 bins, masked secure aggregation (2 clients of 8)", sent, server, masked, x, "imprint", 8))
    mlp = build_model("mlp", SHAPE, 10, seed=1234)
    for B, scale in ((4, 0.7), (8, 0.7), (16, 0.7), (4, 0.5)):
        trap = leakage.TrapWeightServer(trap_scale=scale)
        sent = trap.send(mlp, SHAPE)
        x, y = leakage.bundled_images("mnist", range(B))
        print(row(f"trap weights {scale}, clean", sent, trap, leakage.client_update(sent, x, y), x, "trap_weights"))
    x, y = leakage.bundled_images("mnist", range(1))
    print(row("analytic, clean", mlp, None, leakage.client_update(mlp, x, y), x, "analytic"))
    print(row("analytic, noise 1e-4", mlp, None, leakage.client_update(mlp, x, y, defenses=[GaussianNoise(1e-4)]), x,
              "analytic"))


if __name__ == "__main__":
    main()
