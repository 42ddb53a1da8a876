"""Where variant (b) of bench/dlg_throughput.py spends its time, and how fast it could be at best.

Runs the engine with DLG's settings (L-BFGS lr 1, 300 steps, l2, joint soft labels, randn init) on
the bundled CIFAR-10 images and records, for every objective evaluation, how many problems were
still active. Then it times the objective alone (per-problem gradients through ``torch.func`` and
the outer backward, no optimizer, no Lightning) at each of those problem counts and weights the
times by the run's histogram: the time (b) would take if L-BFGS and Lightning cost nothing.

    python bench/engine_profile.py               # 20 images, 300 steps (about 3 min on 2 cores)
    python bench/engine_profile.py --images 4 --steps 50
    python bench/engine_profile.py --arithmetic-only [--compile]

Then the objective against the machine's arithmetic limit, in the same invocation: its FLOPs per
evaluation at P = ``--images`` problems (counted by ``torch.utils.flop_counter.FlopCounterMode``),
the rate it reaches, and the rate of a 512 x 512 float32 matmul on the same threads (the machine's
own peak for dense arithmetic); where the time goes by operator kind (``torch.profiler``); with
``--compile``, the same objective through ``torch.compile``: its compile time, its time per
evaluation, and how many evaluations it takes to pay the compile back.
"""

from __future__ import annotations

from leakage.attacks.settings import Dummies, LBFGS, Objective
import argparse
import time
from collections import Counter

import torch
import torch.nn.functional as F
from leakage.data.sources import Bundled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=30, help="timed objective evaluations per problem count")
    ap.add_argument("--arithmetic-only", action="store_true", help="skip the engine run, measure the objective only")
    ap.add_argument("--compile", action="store_true", help="also time the objective through torch.compile")
    args = ap.parse_args()
    if args.arithmetic_only:
        arithmetic(args.images, args.repeats, args.compile)
        return

    import lightning.pytorch as pl

    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.federated.client import per_problem_gradients
    from leakage.data.datamodule import VictimDataModule
    from leakage.engine.losses import gradient_distance

    counts: Counter[int] = Counter()
    original = GradientInversion.matching_loss

    def counting(self, *a, **k):
        subset = k.get("subset")
        counts[self.num_problems if subset is None else int(subset.sum())] += 1
        return original(self, *a, **k)

    GradientInversion.matching_loss = counting
    dm = VictimDataModule(Bundled("cifar10"), num_victims=args.images)
    module = GradientInversion(model="lenet", model_seed=1234, labels="joint", objective=Objective(distance="l2"), optimizer=LBFGS(lr=1.0), dummies=Dummies(init="randn", init_seed=0, restarts=1))
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
    arithmetic(args.images, args.repeats, args.compile, evaluations=sum(counts.values()))


def _ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats * 1e3


#: operator kinds of the breakdown, by the aten operator's name
KINDS = {"convolution": {"convolution", "_convolution", "convolution_backward", "mkldnn_convolution",
                         "mkldnn_convolution_backward", "conv2d"},
         "matmul": {"mm", "bmm", "matmul", "addmm", "baddbmm", "linear"},
         "copies and layout": {"copy_", "clone", "contiguous", "cat", "slice", "select", "transpose", "view",
                               "expand", "permute", "stack", "unbind", "reshape", "_unsafe_view", "empty_like",
                               "as_strided", "unsqueeze", "squeeze", "t", "zeros_like", "new_zeros", "fill_", "zero_"}}


def arithmetic(problems: int, repeats: int, compile_too: bool, evaluations: int = 0) -> None:
    """The LeNet DLG objective at ``problems`` problems against the 512 x 512 matmul rate."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.federated.client import per_problem_gradients
    from leakage.data.datamodule import VictimDataModule
    from leakage.engine.losses import gradient_distance

    module = GradientInversion(model="lenet", model_seed=1234, labels="joint", objective=Objective(distance="l2"), optimizer=LBFGS(lr=1.0), dummies=Dummies(init="randn", restarts=1))
    observation = VictimDataModule(Bundled("cifar10"), num_victims=problems).prepare(module.target)
    net, names = module.target, [n for n, _ in module.target.named_parameters()]
    observed = [observation.gradients[n] for n in names]
    x = torch.randn(problems, 1, 3, 32, 32, requires_grad=True)
    y = torch.randn(problems, 1, 10, requires_grad=True)

    def objective() -> None:
        g = per_problem_gradients(net, x, F.softmax(y, -1))
        gradient_distance([g[n] for n in names], observed, "l2").sum().backward()

    with FlopCounterMode(display=False) as counter:
        objective()
    flops = counter.get_total_flops()
    by_op = {str(k).replace("aten.", ""): v for k, v in counter.get_flop_counts()["Global"].items()}
    ms = _ms(objective, repeats)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    mm_ms = _ms(lambda: a @ b, 10 * repeats)
    rate, peak = flops / ms / 1e6, 2 * 512 ** 3 / mm_ms / 1e6
    print(f"\nthe objective at P = {problems} ({torch.get_num_threads()} thread(s)): {flops / 1e6:.0f} MFLOP per "
          f"evaluation ({', '.join(f'{k} {100 * v / flops:.0f}%' for k, v in sorted(by_op.items(), key=lambda kv: -kv[1]))}), "
          f"{ms:.2f} ms: {rate:.1f} GFLOP/s; a 512 x 512 matmul: {peak:.1f} GFLOP/s; "
          f"the objective reaches {100 * rate / peak:.0f}% of it")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            objective()
    spent: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key.split("::")[-1] if event.key.startswith("aten::") else ""
        kind = next((k for k, names in KINDS.items() if name in names), "elementwise, autograd and the rest")
        spent[kind] = spent.get(kind, 0.0) + event.self_cpu_time_total
    total = sum(spent.values())
    print("where its time goes (self time by operator kind): "
          + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(spent.items(), key=lambda kv: -kv[1])))
    if compile_too:
        compiled = torch.compile(objective)
        t = time.perf_counter()
        compiled()
        compile_s = time.perf_counter() - t
        c_ms = _ms(compiled, repeats)
        gain = ms - c_ms
        pays = f"pays back after {compile_s * 1e3 / gain:,.0f} evaluations" if gain > 0 else "never pays back"
        runs = f" (this run made {evaluations:,})" if evaluations else ""
        print(f"torch.compile: {compile_s:.0f} s to compile, then {c_ms:.2f} ms per evaluation "
              f"({ms / c_ms:.2f}x); it {pays}{runs}, at one fixed P (a changing number of active "
              "problems compiles again)")


if __name__ == "__main__":
    main()
