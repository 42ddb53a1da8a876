"""Soteria and PRECODE against the honest and the adaptive attacker (Balunovic et al., ICLR 2022), in one table.

    python bench/adaptive_defenses.py                      # 4 MNIST + 4 CIFAR-10 images, prune 0.8
    python bench/adaptive_defenses.py --datasets mnist --images 2 --ratios 0.4 0.8
    python bench/adaptive_defenses.py --ratios                 # no Soteria rows: none and PRECODE

Each image is one FedSGD update of LeNet (seed 1234, untrained) on the bundled test images 0 to N-1.
Rows: no defense, then Soteria (leakage.federated.soteria: the weight gradient of the classifier ``fc``,
whose input is the representation, pruned on the prune_ratio share of features that score lowest)
against the honest attacker (the fast preset: iDLG label, L-BFGS on the l2 distance of the whole update)
and against the adaptive one (the same with ``objective.exclude [fc]``: the defended layer left out of
the matching loss). PRECODE rows: the same images on ``lenet_precode`` (LeNet with PRECODE's variational
bottleneck before ``fc``, the client's own noise in every update) against the honest attacker (the fast
preset, which can only draw noise of its own) and against the adaptive one (``attack="bottleneck"``:
the representation read off the bottleneck's encoder, then the layers below it inverted; never reported
exact). Cells: the mean SSIM over the images and how many reach 0.9. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

import leakage
from leakage.attacks.settings import Objective
from leakage.engine.metrics import ssim_per_image
from leakage.engine.models import build_model
from leakage.federated.soteria import Soteria

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def attack(model, update, shape, x, exclude=None, adaptive_precode=False) -> str:
    if adaptive_precode:
        result = leakage.invert(model, update, input_shape=shape, num_classes=10, batch_size=1, attack="bottleneck")
    else:
        result = leakage.invert(model, update, input_shape=shape, num_classes=10, batch_size=1, attack="fast",
                                objective=Objective(distance="l2", exclude=exclude))
    ssim = ssim_per_image(result.images[:, 0].clamp(0, 1), x)
    return f"{float(ssim.mean()):.3f} ({int((ssim >= 0.9).sum())}/{len(ssim)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "cifar10"], choices=list(SHAPES))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--ratios", type=float, nargs="*", default=[0.8],
                        help="Soteria prune ratios (none: no Soteria rows)")
    parser.add_argument("--no-precode", action="store_true", help="leave out the PRECODE rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("SSIM of the reconstructions (mean; reaching 0.9), one image per update, LeNet (PRECODE: lenet_precode)\n")
    print("| data | defense | attacker | SSIM | seconds |")
    print("|---|---|---|---|---|")
    for dataset in args.datasets:
        shape = SHAPES[dataset]
        x, y = leakage.bundled_images(dataset, range(args.images))
        model = build_model("lenet", shape, 10, seed=1234)
        clean = leakage.client_update(model, x[:, None], y[:, None])
        cases = [("none", "honest", clean, None, model)]
        for ratio in args.ratios:
            defended = Soteria(prune_ratio=ratio).defend(model, x[:, None], clean)
            cases += [(f"Soteria {ratio:g}", "honest", defended, None, model),
                      (f"Soteria {ratio:g}", "adaptive (exclude fc)", defended, ["fc"], model)]
        if not args.no_precode:
            precode = build_model("lenet_precode", shape, 10, seed=1234)
            torch.manual_seed(0)  # the client's noise: its own draw per update, never given to the attacks
            noisy = leakage.client_update(precode, x[:, None], y[:, None])
            cases += [("PRECODE", "honest", noisy, None, precode),
                      ("PRECODE", "adaptive (bottleneck)", noisy, "bottleneck", precode)]
        for defense, who, update, exclude, target in cases:
            start = time.perf_counter()
            cell = attack(target, update, shape, x, None if exclude == "bottleneck" else exclude,
                          adaptive_precode=exclude == "bottleneck")
            print(f"| {dataset} | {defense} | {who} | {cell} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
