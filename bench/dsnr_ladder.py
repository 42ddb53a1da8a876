"""The SEER D-SNR ladder: the D-SNR a client measures on its own batch under class fishing, against the
server's multiplier, beside whether the fishing attack reconstructs the fished image.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/dsnr_ladder.py
    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/dsnr_ladder.py --size 16 --multipliers 1 4 1000 --targets 2

For each target class, a batch of B bundled MNIST test images holding exactly one image of that class (the
first of the class, then the first B - 1 images of other classes), LeNet (seed 1234) as the global model,
:class:`leakage.federated.server.FishingServer` at each multiplier. D-SNR is the audit's check
(:class:`leakage.audit.DSNR`, the largest layer's); the reconstruction is ``leakage.invert(...,
attack="fishing")`` on the client's FedSGD update, scored by SSIM of the fished image (success: SSIM >= 0.9).
The honest row is the global model itself (D-SNR only). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

import leakage
from leakage.audit import DSNR
from leakage.engine.metrics import ssim_per_image
from leakage.engine.models import build_model
from leakage.federated.server import FishingServer

SHAPE = (1, 28, 28)


def one_of(target: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` bundled MNIST images, the first of class ``target`` first, the rest of other classes."""
    x, y = leakage.bundled_images("mnist", range(1000))
    chosen = [int((y == target).nonzero()[0]), *(y != target).nonzero().flatten()[:size - 1].tolist()]
    return x[chosen], y[chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--multipliers", type=float, nargs="+", default=[0.5, 1, 2, 4, 8, 1000])
    parser.add_argument("--targets", type=int, nargs="+", default=[2, 7, 9])
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_model("lenet", SHAPE, 10, seed=1234)
    print(f"B = {args.size}, target classes {args.targets}; D-SNR (min-max over targets; the audit fails at "
          f"{DSNR().fail:g}) and the fished image's SSIM (mean; reaching 0.9)\n")
    print("| server | D-SNR | audit's D-SNR verdicts | SSIM of the fished image | per target: D-SNR / SSIM | seconds |")
    print("|---|---|---|---|---|---|")
    batches = {t: one_of(t, args.size) for t in args.targets}
    honest = [leakage.audit(model, batch=batches[t], checks=[DSNR()])["D-SNR"] for t in args.targets]
    print(f"| honest | {min(f.score for f in honest):.3g}-{max(f.score for f in honest):.3g} | "
          f"{', '.join(f.verdict for f in honest)} | - | - | - |", flush=True)
    for multiplier in args.multipliers:
        start = time.perf_counter()
        dsnr, ssim = [], []
        for t in args.targets:
            x, y = batches[t]
            server = FishingServer(target_class=t, multiplier=multiplier)
            sent = server.send(model, SHAPE)
            dsnr.append(leakage.audit(sent, batch=(x, y), checks=[DSNR()])["D-SNR"])
            result = leakage.invert(sent, leakage.client_update(sent, x, y), input_shape=SHAPE, num_classes=10,
                                    batch_size=args.size, attack="fishing", server=server)
            ssim.append(float(ssim_per_image(result.images[0].clamp(0, 1), x[:1].expand_as(result.images[0])).max()))
        print(f"| fishing, multiplier {multiplier:g} | {min(f.score for f in dsnr):.3g}-{max(f.score for f in dsnr):.3g} | "
              f"{', '.join(f.verdict for f in dsnr)} | {sum(ssim) / len(ssim):.3f} ({sum(s >= 0.9 for s in ssim)}/{len(ssim)}) | "
              + ", ".join(f"{t}: {f.score:.3g} / {s:.2f}" for t, f, s in zip(args.targets, dsnr, ssim))
              + f" | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
