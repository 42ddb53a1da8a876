"""How the engine scales with the number of problems P: per-iteration and per-problem time, memory.

DLG's settings (LeNet, l2, joint soft labels, randn init, L-BFGS lr 1 and history 100) on the 20
bundled CIFAR-10 images, with ``restarts = P / 20`` so that P problems are solved at once. For each
P, in its own child process (so peak memory is that P's alone):

- one batched L-BFGS iteration: an objective evaluation with its backward plus the L-BFGS update
  of every problem (``BatchedLBFGS`` with ``max_iter=1``, so one ``step()`` is one iteration),
  timed over ``--steps`` iterations after ``--warmup`` ones;
- the objective and its backward alone (no optimizer);
- peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on the CPU
  (which includes Python and torch themselves, about 400 MiB).

    python bench/scaling.py --device cuda                          # P = 20 ... 20,000
    python bench/scaling.py --device cpu --max-problems 1000       # minutes on 2 cores
    python bench/scaling.py --device cuda --compile on             # the objective through torch.compile
"""

from __future__ import annotations

from leakage.attacks.settings import Dummies, LBFGS, Objective
import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from dlg_throughput import run_isolated  # each P in its own process (bench/ is on sys.path)
from leakage.data.sources import Bundled

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(P: int, device: str, steps: int, warmup: int, compile: str, fixed_shape: bool | None) -> dict:
    sys.path.insert(0, str(ROOT))
    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.data.datamodule import VictimDataModule
    from leakage.engine.optim import BatchedLBFGS
    from leakage.engine.precision import full_precision

    victims = min(P, 20)
    if P % victims:
        raise ValueError(f"P must be a multiple of 20 (or at most 20), got {P}")
    dm = VictimDataModule(Bundled("cifar10"), num_victims=victims)
    module = GradientInversion(model="lenet", model_seed=1234, labels="joint", objective=Objective(distance="l2", compile=compile, fixed_shape=fixed_shape), optimizer=LBFGS(lr=1.0), dummies=Dummies(init="randn", restarts=P // victims))
    observation = dm.prepare(module.target)
    module.attach(observation)
    module.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    params = [module.dummy_data, module.dummy_labels]
    opt = BatchedLBFGS(params, lr=1.0, max_iter=1, history_size=100, early_exit=not module.fixed_shape,
                       active_only=not module.fixed_shape)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        losses = module.matching_loss(subset=opt.evaluating)
        losses.nansum().backward()
        return losses.detach()

    def objective() -> None:
        for p in params:
            p.grad = None
        module.matching_loss().sum().backward()

    with full_precision():
        t0 = time.perf_counter()
        opt.step(closure)  # the first step builds the state (and compiles, with --compile on)
        _sync(device)
        first = time.perf_counter() - t0
        for _ in range(warmup):
            opt.step(closure)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step(closure)
        _sync(device)
        per_iter = (time.perf_counter() - t0) / steps
        saved = [p.detach().clone() for p in params]
        for _ in range(2):
            objective()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            objective()
        _sync(device)
        per_obj = (time.perf_counter() - t0) / steps
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"P": P, "first_s": first, "iter_ms": per_iter * 1e3, "objective_ms": per_obj * 1e3, "peak_mib": peak,
            "compiled": module.compiled, "fixed_shape": module.fixed_shape,
            "failed": int(opt.failed.sum())}


def measure_or_error(*args) -> dict:
    """:func:`measure`, or the error it ended with (e.g. out of memory at the largest P)."""
    try:
        return measure(*args)
    except Exception as err:  # noqa: BLE001 - report it as that P's row
        return {"P": args[0], "error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--problems", default="20,200,1000,5000,20000", help="comma-separated values of P")
    ap.add_argument("--max-problems", type=int, default=None, help="skip the P above this")
    ap.add_argument("--steps", type=int, default=10, help="timed iterations per P")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", default="off", choices=["auto", "on", "off"])
    ap.add_argument("--fixed-shape", default="auto", choices=["auto", "true", "false"])
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    fixed = {"auto": None, "true": True, "false": False}[args.fixed_shape]
    sizes = [int(p) for p in args.problems.split(",")]
    if args.max_problems is not None:
        sizes = [p for p in sizes if p <= args.max_problems]

    results = [run_isolated(measure_or_error, P, args.device, args.steps, args.warmup, args.compile, fixed) for P in sizes]
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nengine scaling on {name}: DLG settings, LeNet, CIFAR-10 32x32, L-BFGS history 100, "
          f"compile {args.compile}, {args.steps} timed iterations per P\n")
    # memory is linear in P when every added problem costs the same: the slope between rows
    print("| P | ms per L-BFGS iteration | µs per problem-iteration | objective+backward ms | "
          "first step s | peak memory (MiB) | MiB per added problem | compiled | fixed shape |")
    print("|---|---|---|---|---|---|---|---|---|")
    prev = None
    for r in results:
        if "error" in r:
            print(f"| {r['P']} | {r['error']} | | | | | | | |")
            continue
        slope = f"{(r['peak_mib'] - prev['peak_mib']) / (r['P'] - prev['P']):.2f}" if prev else ""
        print(f"| {r['P']} | {r['iter_ms']:.1f} | {1e3 * r['iter_ms'] / r['P']:.1f} | {r['objective_ms']:.1f} | "
              f"{r['first_s']:.1f} | {r['peak_mib']:.0f} | {slope} | {r['compiled']} | {r['fixed_shape']} |")
        prev = r
    # what the L-BFGS state alone takes per problem (float32): the history of history_size pairs of
    # D-vectors, their inner products, and a few D-vectors
    D = 3 * 32 * 32 + 10
    H = 100
    print(f"\nL-BFGS state per problem (history {H}, D = {D}): "
          f"{(2 * H * D + 2 * H * H + 3 * D) * 4 / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
