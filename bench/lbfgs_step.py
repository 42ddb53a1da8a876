"""The L-BFGS update alone: one BatchedLBFGS iteration over P problems against P torch.optim.LBFGS ones.

A cheap objective (a per-problem quartic in D = 3,082 variables, the size of a CIFAR-10 image plus
10 label logits) so that what is timed is the optimizer: the history of ``--history`` curvature
pairs is filled first, then ``--steps`` steps of one iteration each (``max_iter=1``) are timed,
for the batched optimizer (with ``active_only``, as the attack runs it on the CPU) and, as the
reference in the same invocation, for ``torch.optim.LBFGS`` run once per problem.

    python bench/lbfgs_step.py                 # P = 1, 4, 20
    python bench/lbfgs_step.py --problems 1,20,100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from leakage.engine.optim import BatchedLBFGS  # noqa: E402


def _loss(x: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # an ill-conditioned quadratic (weights w from 1e-3 to 1e3): every curvature pair is accepted
    # and L-BFGS is far from converged after a few hundred iterations, so every timed iteration
    # does the full update with a full history
    return ((x - a) ** 2 * w).sum(-1)


def batched(P: int, D: int, H: int, fill: int, steps: int) -> float:
    torch.manual_seed(0)
    a, w = torch.randn(P, D) * 0.1, torch.logspace(-3, 3, D)
    x = (torch.randn(P, D) * 2).requires_grad_(True)
    opt = BatchedLBFGS([x], lr=0.5, max_iter=1, history_size=H, active_only=True)

    def closure():
        opt.zero_grad()
        losses = _loss(x, a, w)
        losses.sum().backward()
        return losses.detach()

    for _ in range(fill):
        opt.step(closure)
    before = opt.state["problems"]["n_iter"].clone()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step(closure)
    seconds = (time.perf_counter() - t0) / steps
    if not bool((opt.state["problems"]["n_iter"] - before == steps).all()):
        raise SystemExit("a problem stopped iterating during the timed steps: the timing would not be comparable")
    return seconds


def reference(P: int, D: int, H: int, fill: int, steps: int) -> float:
    torch.manual_seed(0)
    a, w = torch.randn(P, D) * 0.1, torch.logspace(-3, 3, D)
    xs = [(torch.randn(D) * 2).requires_grad_(True) for _ in range(P)]
    opts = [torch.optim.LBFGS([x], lr=0.5, max_iter=1, history_size=H) for x in xs]

    def closure_of(p):
        def closure():
            opts[p].zero_grad()
            loss = _loss(xs[p], a[p], w)
            loss.backward()
            return loss
        return closure

    closures = [closure_of(p) for p in range(P)]
    for _ in range(fill):
        for opt, c in zip(opts, closures):
            opt.step(c)
    before = [opt.state[x]["n_iter"] for opt, x in zip(opts, xs)]
    t0 = time.perf_counter()
    for _ in range(steps):
        for opt, c in zip(opts, closures):
            opt.step(c)
    seconds = (time.perf_counter() - t0) / steps
    if any(opt.state[x]["n_iter"] - b != steps for opt, x, b in zip(opts, xs, before)):
        raise SystemExit("a reference problem stopped iterating during the timed steps")
    if any(len(opt.state[x]["old_dirs"]) != H for opt, x in zip(opts, xs)):
        raise SystemExit("a reference problem's history is not full")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="1,4,20")
    ap.add_argument("--dim", type=int, default=3 * 32 * 32 + 10)
    ap.add_argument("--history", type=int, default=100)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    fill = args.history + 10
    print(f"\nL-BFGS update with a full history of {args.history} pairs, D = {args.dim}, "
          f"{torch.get_num_threads()} threads, {args.steps} timed iterations\n")
    print("| P | torch.optim.LBFGS, P problems one by one (ms) | BatchedLBFGS, P at once (ms) | ratio |")
    print("|---|---|---|---|")
    for P in (int(p) for p in args.problems.split(",")):
        ref = reference(P, args.dim, args.history, fill, args.steps)
        mine = batched(P, args.dim, args.history, fill, args.steps)
        print(f"| {P} | {1e3 * ref:.2f} | {1e3 * mine:.2f} | {ref / mine:.1f}x |")


if __name__ == "__main__":
    main()
