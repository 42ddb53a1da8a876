"""The Cocktail Party Attack against the batch size, on the bundled MNIST and CIFAR-10 test images
with the built-in fully connected ``mlp`` (flattened input -> 256 -> 10, seed 1234, untrained).

    python bench/cpa_batch.py [--mnist 4 8 16 32 64 128] [--cifar 4 8 16 20] [--victims 2]

Each batch size B attacks ``victims`` updates of B consecutive bundled images (0..B-1, B..2B-1, ...,
as many as the bundled images hold: MNIST 1,000, CIFAR-10 20), FedSGD, through ``leakage.invert``,
twice: CPA (``attack="cpa"``: ICA, the non-negative sparse prior, scale from the bias; ``sparsity``
0.01 on MNIST, 0 on CIFAR-10, whose images have no background) and ICA alone (``refine_steps=0``).
A row: the share of images with SSIM >= 0.9 after the Hungarian matching of the metrics, the mean
SSIM, bias_count's label accuracy and the seconds per update of the solution (FastICA and the
projections: the attack's solve_seconds).
"""

from __future__ import annotations

import argparse

import torch

import leakage
from leakage.engine.metrics import reconstruction_metrics
from leakage.engine.models import build_model

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
BUNDLED = {"mnist": 1000, "cifar10": 20}
#: the prior per dataset: MNIST's black background is sparse; CIFAR-10's images are not (non-negativity only)
SETTINGS = {"mnist": {"sparsity": 0.01}, "cifar10": {"sparsity": 0.0}}


def run(dataset: str, batch: int, victims: int, **options) -> dict:
    shape = SHAPES[dataset]
    victims = max(1, min(victims, BUNDLED[dataset] // batch))
    x, y = leakage.bundled_images(dataset, range(victims * batch))
    x, y = x.view(victims, batch, *shape), y.view(victims, batch)
    model = build_model("mlp", shape, 10, seed=1234)
    result = leakage.invert(model, leakage.client_update(model, x, y), shape, 10, attack="cpa", batch_size=batch,
                            **{**SETTINGS[dataset], **options})
    ssim = reconstruction_metrics(result.images, x)["ssim_images"].flatten()
    labels = leakage.report(result, x, y).summary["label_acc"]
    return {"images": ssim.numel(), "recovered": float((ssim >= 0.9).float().mean()), "ssim": float(ssim.mean()),
            "labels": labels, "seconds": result.module.solve_seconds / victims}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", type=int, nargs="*", default=[4, 8, 16, 32, 64, 128])
    ap.add_argument("--cifar", type=int, nargs="*", default=[4, 8, 16, 20])
    ap.add_argument("--victims", type=int, default=2, help="updates per batch size (at most the bundled images allow)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| data | B | images | CPA: SSIM >= 0.9 | CPA: mean SSIM | ICA alone: SSIM >= 0.9 | ICA alone: mean SSIM "
          "| labels (bias_count) | s per update |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dataset, sizes in (("mnist", args.mnist), ("cifar10", args.cifar)):
        for b in sizes:
            cpa = run(dataset, b, args.victims)
            ica = run(dataset, b, args.victims, refine_steps=0)
            print(f"| {dataset} | {b} | {cpa['images']} | {100 * cpa['recovered']:.0f}% | {cpa['ssim']:.3f} "
                  f"| {100 * ica['recovered']:.0f}% | {ica['ssim']:.3f} | {100 * cpa['labels']:.0f}% "
                  f"| {cpa['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
