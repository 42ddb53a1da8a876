"""Where variant (b) of bench/dlg_throughput.py spends its time, and how fast it could be at best.

Runs the engine with DLG's settings (L-BFGS lr 1, 300 steps, l2, joint soft labels, randn init) on
the bundled CIFAR-10 images and records, for every objective evaluation, how many problems were
still active. Then it times the objective alone (per-problem gradients through ``torch.func`` and
the outer backward, no optimizer, no Lightning) at each of those problem counts and weights the
times by the run's histogram: the time (b) would take if L-BFGS and Lightning cost nothing.

    python bench/engine_profile.py               # 20 images, 300 steps (about 3 min on 2 cores)
    python bench/engine_profile.py --images 4 --steps 50
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=30, help="timed objective evaluations per problem count")
    args = ap.parse_args()

    import lightning.pytorch as pl

    from leakage.attack import GradientInversion
    from leakage.client import per_problem_gradients
    from leakage.data import VictimDataModule
    from leakage.losses import gradient_distance

    counts: Counter[int] = Counter()
    original = GradientInversion.matching_loss

    def counting(self, *a, **k):
        subset = k.get("subset")
        counts[self.num_problems if subset is None else int(subset.sum())] += 1
        return original(self, *a, **k)

    GradientInversion.matching_loss = counting
    dm = VictimDataModule(source="bundled", dataset="cifar10", num_victims=args.images)
    module = GradientInversion(model="lenet", model_seed=1234, distance="l2", optimizer="lbfgs", lr=1.0,
                               labels="joint", init="randn", init_seed=0, restarts=1)
    trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    run_time = time.perf_counter() - t0
    GradientInversion.matching_loss = original
    state = trainer.optimizers[0].state["problems"]
    iters = state["n_iter"].tolist()

    net, observed = module.target, module.observed()
    ms: dict[int, float] = {}
    for P in sorted(counts):
        x = torch.randn(P, 1, 3, 32, 32, requires_grad=True)
        y = torch.randn(P, 1, 10, requires_grad=True)
        obs = [o[:P] for o in observed]

        def objective() -> None:
            g = per_problem_gradients(net, x, F.softmax(y, -1))
            gradient_distance([g[n] for n in module.param_names], obs, "l2").sum().backward()

        for _ in range(3):
            objective()
        t = time.perf_counter()
        for _ in range(args.repeats):
            objective()
        ms[P] = (time.perf_counter() - t) / args.repeats * 1e3
    floor = sum(counts[P] * ms[P] for P in counts) / 1e3

    print(f"\nengine, DLG settings, {args.images} images, {args.steps} steps: {run_time:.1f} s wall, "
          f"{sum(counts.values())} objective evaluations, {sum(iters)} L-BFGS iterations over all problems "
          f"(per problem: min {min(iters)}, median {sorted(iters)[len(iters) // 2]}, max {max(iters)})\n")
    print("| active problems | evaluations | objective ms/evaluation |")
    print("|---|---|---|")
    for P in sorted(counts):
        print(f"| {P} | {counts[P]} | {ms[P]:.2f} |")
    print(f"\nobjective alone, weighted by these evaluations: {floor:.1f} s "
          f"({100 * floor / run_time:.0f}% of the run); the rest is L-BFGS and Lightning")


if __name__ == "__main__":
    main()
