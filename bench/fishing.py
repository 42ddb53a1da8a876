"""Class fishing (Wen et al., ICML 2022) against the batch size B and the server's multiplier.

    python bench/fishing.py                              # B = 8, 32; multipliers 1, 2, 4, 8, 1000
    python bench/fishing.py --sizes 8 --multipliers 1000 --targets 2

For each target class, one FedSGD update of B bundled MNIST test images holding exactly one image of
that class (the first one of the class, then the first B - 1 images of other classes) on LeNet (seed
1234). Rows: the honest-but-curious server with the fast preset and bias_count labels on the whole batch
(the image of the target class scored against its best slot: the reading most favourable to the honest
attack), then the fishing server at each multiplier with ``leakage fit --attack fishing``'s attack
(the fishing preset: at most 300 steps). Cells: the mean SSIM of the target image over the target
classes, and how many of them reach SSIM 0.9. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

import leakage
from leakage.engine.metrics import ssim_per_image
from leakage.engine.models import build_model
from leakage.federated.server import FishingServer

SHAPE = (1, 28, 28)


def batch(target: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B images of the bundled MNIST test set with exactly one of class ``target`` (the first), first."""
    x, y = leakage.bundled_images("mnist", range(1000))
    first = int((y == target).nonzero()[0])
    others = (y != target).nonzero().flatten()[:size - 1].tolist()
    chosen = [first, *others]
    return x[chosen], y[chosen]


def fished_ssim(images: torch.Tensor, truth: torch.Tensor) -> float:
    return float(ssim_per_image(images.clamp(0, 1), truth.expand_as(images)).max())


def run(size: int, target: int, multiplier: float | None) -> float:
    x, y = batch(target, size)
    model = build_model("lenet", SHAPE, 10, seed=1234)
    if multiplier is None:
        result = leakage.invert(model, leakage.client_update(model, x, y), input_shape=SHAPE, num_classes=10,
                                batch_size=size, attack="fast", labels="bias_count")
    else:
        server = FishingServer(target_class=target, multiplier=multiplier)
        sent = server.send(model, SHAPE)
        result = leakage.invert(sent, leakage.client_update(sent, x, y), input_shape=SHAPE, num_classes=10,
                                batch_size=size, attack="fishing", server=server)
    return fished_ssim(result.images[0], x[:1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--multipliers", type=float, nargs="+", default=[1, 2, 4, 8, 1000])
    parser.add_argument("--targets", type=int, nargs="+", default=[2, 7, 9])
    parser.add_argument("--no-honest", action="store_true", help="skip the honest server's row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = ([("honest (fast preset)", None)] if not args.no_honest else []) + [
        (f"fishing, multiplier {m:g}", m) for m in args.multipliers]
    print(f"target classes {args.targets}; SSIM of the target image (mean; reaching 0.9)\n")
    print("| server | " + " | ".join(f"B = {b}" for b in args.sizes) + " | seconds |")
    print("|---|" + "---|" * (len(args.sizes) + 1))
    for name, multiplier in rows:
        start = time.perf_counter()
        cells = []
        for size in args.sizes:
            scores = [run(size, t, multiplier) for t in args.targets]
            cells.append(f"{sum(scores) / len(scores):.3f} ({sum(s >= 0.9 for s in scores)}/{len(scores)})")
        print(f"| {name} | " + " | ".join(cells) + f" | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
