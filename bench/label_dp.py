"""Label DP (randomized response, RRWithPrior) against the label attacks: accuracy against the bound.

    python bench/label_dp.py                          # eps 1, 2, 4, 8; 500 images; B = 1 and 8
    python bench/label_dp.py --epsilons 1 --images 200

The client randomizes its labels (leakage.federated.labeldp), then shares the FedSGD gradient of LeNet
(seed 1234, untrained) on the bundled MNIST test images 0 to N-1; the attacks restore the labels from
the update (``bias_count`` and ``ilrg``, leakage.attacks.labels), and are scored against the true labels.
With one image per update (B = 1) the score is the share of examples whose label the attack names: the
quantity label DP bounds, ``e^eps / (e^eps + K - 1)`` for labels uniform over K = 10 classes (MNIST's are
close to uniform), with its sampling error (three standard errors over the N x S draws, ``3 sqrt(b (1 - b) / (N S))``). With B = 8
the score is the report's label accuracy: the overlap of the recovered and the true label multisets, a
different quantity, which random flips can leave intact (two flipped labels that swap classes leave
the multiset as it was): it can exceed the per-example bound without breaking the guarantee.

Rows: no defense, then each epsilon with randomized response and with RRWithPrior (uniform prior,
which is randomized response, and a skewed public prior giving classes 0-2 60% of the mass: it keeps a
label inside its k classes with ``e^eps / (e^eps + k - 1)``, more than randomized response, and none
outside; on MNIST's near-uniform labels a prior that wrong costs accuracy). The bound is the one for
labels uniform over the K classes, whatever the mechanism.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

import leakage
from leakage.attacks.labels import restore_batch_labels
from leakage.engine.metrics import label_accuracy
from leakage.engine.models import build_model
from leakage.federated.labeldp import RandomizedResponse, RRWithPrior, keep_probability

SHAPE, K = (1, 28, 28), 10
SKEWED = [0.2, 0.2, 0.2] + [0.4 / 7] * 7


def reseeded(defense, seed: int):
    """The same mechanism with another seed."""
    other = copy.copy(defense)
    other.seed = seed
    return other


def scores(model, x: torch.Tensor, y: torch.Tensor, defense, batch: int, seeds: int) -> tuple[float, float, float]:
    """(share of labels the client kept, bias_count accuracy, ilrg accuracy) over the updates of ``batch``,
    averaged over ``seeds`` draws of the mechanism."""
    xb, yb = x.view(-1, batch, *SHAPE), y.view(-1, batch)
    total = [0.0, 0.0, 0.0]
    for seed in range(seeds if defense is not None else 1):
        noisy = yb if defense is None else reseeded(defense, seed).privatize(yb, K)
        grads = leakage.client_update(model, xb, noisy)
        out = [float((noisy == yb).float().mean())]
        for strategy in ("bias_count", "ilrg"):
            restored = restore_batch_labels(model, grads, batch, SHAPE, strategy)
            out.append(float(label_accuracy(restored, yb).mean()))
        total = [t + o for t, o in zip(total, out)]
    return tuple(t / (seeds if defense is not None else 1) for t in total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--images", type=int, default=992, help="bundled MNIST test images 0 to N-1 (a multiple of 8)")
    parser.add_argument("--seeds", type=int, default=5, help="draws of the mechanism per row (seeds 0 to S-1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = leakage.bundled_images("mnist", range(args.images))
    model = build_model("lenet", SHAPE, K, seed=1234)
    n = args.images
    rows = [("none", None, None)]
    for eps in args.epsilons:
        rows += [(f"randomized response, eps {eps:g}", RandomizedResponse(eps), keep_probability(eps, K)),
                 (f"RRWithPrior uniform, eps {eps:g}", RRWithPrior(eps), keep_probability(eps, K))]
        skewed = RRWithPrior(eps, prior=SKEWED)
        rows.append((f"RRWithPrior skewed (k = {len(skewed.classes(K))}), eps {eps:g}", skewed, keep_probability(eps, K)))
    print(f"{n} bundled MNIST test images, LeNet (untrained), K = {K}; label accuracy against the true labels, "
          f"mean of {args.seeds} draws of the mechanism\n")
    print("| defense | bound e^eps/(e^eps+K-1) | kept (B=1) | bias_count B=1 | ilrg B=1 | bias_count B=8 (multiset) "
          "| ilrg B=8 (multiset) | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, defense, bound in rows:
        start = time.perf_counter()
        kept, bias1, ilrg1 = scores(model, x, y, defense, 1, args.seeds)
        _, bias8, ilrg8 = scores(model, x, y, defense, 8, args.seeds)
        shown = "-" if bound is None else f"{bound:.3f} +- {3 * math.sqrt(bound * (1 - bound) / (n * args.seeds)):.3f}"
        print(f"| {name} | {shown} | {kept:.3f} | {bias1:.3f} | {ilrg1:.3f} | {bias8:.3f} | {ilrg8:.3f} "
              f"| {time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
