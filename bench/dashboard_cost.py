"""What the dashboards cost per logged image step: the labelled gallery and the loss-history figure
for 20 CIFAR-10-sized victims (the presets' size), against one attack step of the fast preset's
objective (per-problem gradients of LeNet and their backward) in the same invocation.

    python bench/dashboard_cost.py [--victims 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from leakage.federated.client import per_problem_gradients
from leakage.reporting.dashboard import figure_png, gallery_png, history_figure
from leakage.engine.losses import gradient_distance
from leakage.engine.models import build_model


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--victims", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    V = a.victims
    g = torch.Generator().manual_seed(0)
    truth, recon = torch.rand(V, 1, 3, 32, 32, generator=g), torch.rand(V, 1, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (V, 1), generator=g)
    history = np.exp(-np.linspace(0, 10, 300))[:, None] * np.random.default_rng(0).uniform(0.5, 2, (1, V))

    def gallery():
        gallery_png(recon, labels, truth=truth, true_labels=labels, indices=[[v] for v in range(V)],
                    ssim_images=torch.rand(V, 1, generator=g), perm=torch.zeros(V, 1, dtype=torch.long),
                    failed=[False] * V, title="bench")

    def hist():
        figure_png(history_figure(history, [v % 5 != 0 for v in range(V)], title="bench"))

    model = build_model("lenet", (3, 32, 32), 10)
    names = [n for n, _ in model.named_parameters()]
    x = recon.clone().requires_grad_()
    y = labels
    observed = [o.detach() for o in per_problem_gradients(model, truth, y).values()]

    def step():
        grads = per_problem_gradients(model, x, y)
        gradient_distance([grads[n] for n in names], observed, "l2").sum().backward()

    t_step, t_gallery, t_hist = best_of(step, a.repeats), best_of(gallery, a.repeats), best_of(hist, a.repeats)
    print(f"{V} victims, best of {a.repeats}, torch threads {torch.get_num_threads()}")
    print(f"one objective evaluation + backward (reference): {t_step * 1e3:8.1f} ms")
    print(f"gallery image:                                  {t_gallery * 1e3:8.1f} ms  ({t_gallery / t_step:.1f}x)")
    print(f"history figure:                                 {t_hist * 1e3:8.1f} ms  ({t_hist / t_step:.1f}x)")


if __name__ == "__main__":
    main()
