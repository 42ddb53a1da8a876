"""What keeping the best iterate costs: one :meth:`BestIterate.offer` against one evaluation of the
attack's objective with its backward (what every L-BFGS closure and every Adam step runs, and what
is offered after it), at the same problems.

DLG's setting (LeNet, ``l2``, joint soft labels) on the bundled CIFAR-10 images, ``--problems``
problems (victims x restarts). The two are timed interleaved, ``--repeats`` times each, and the
medians compared, so that other load on the machine hits both alike.

    python bench/best_iterate_cost.py                  # P = 20
    python bench/best_iterate_cost.py --problems 20,80
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from leakage.attacks.settings import Dummies
from leakage.attacks.gradient_inversion import GradientInversion  # noqa: E402
from leakage.data.datamodule import VictimDataModule  # noqa: E402
from leakage.data.sources import Bundled


def measure(P: int, repeats: int) -> tuple[float, float]:
    victims = min(P, 20)
    restarts = max(1, P // victims)
    dm = VictimDataModule(Bundled("cifar10"), num_victims=victims)
    module = GradientInversion(model="lenet", input_shape=(3, 32, 32), num_classes=10, labels="joint", dummies=Dummies(restarts=restarts))
    module.attach(dm.prepare(module.target))

    def evaluate() -> torch.Tensor:
        losses = module.matching_loss()
        losses.nansum().backward()
        return losses.detach()

    losses = evaluate()
    objective, offer = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        losses = evaluate()
        objective.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        module.best.offer(losses * (1 - 1e-3 * torch.rand_like(losses)), module.point())  # every row improves
        offer.append(time.perf_counter() - t0)
    return statistics.median(objective), statistics.median(offer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="20")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print("| problems | objective + backward (ms) | offer (ms) | overhead |")
    print("|---|---|---|---|")
    for P in (int(p) for p in args.problems.split(",")):
        obj, off = measure(P, args.repeats)
        print(f"| {P} | {1e3 * obj:.2f} | {1e3 * off:.3f} | {100 * off / obj:.2f}% |")


if __name__ == "__main__":
    main()
