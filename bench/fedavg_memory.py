"""Memory and time of one attack evaluation (objective + backward) against FedAvg local steps.

    OMP_NUM_THREADS=1 python bench/fedavg_memory.py [--problems 20] [--steps 1 2 5 10]

Each cell runs in a fresh process: the target model (LeNet or the MLP on MNIST shapes), ``P``
problems of one image each (the 20 bundled images, then restarts of them: ``P`` a multiple of 20) (dummies as in ``configs/mnist_fedavg.yaml``), then one evaluation of
the matching loss with its backward, as one L-BFGS inner iteration does. Reported: the growth of
the process's peak resident memory over its level before the evaluation, and the mean time of
three evaluations, each with its ratio to the first ``local_steps`` of the same model (the
reference run of this invocation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, torch
from leakage.attacks.gradient_inversion import GradientInversion
from leakage.attacks.settings import Dummies
from leakage.data.datamodule import VictimDataModule
from leakage.data.sources import Bundled
from leakage.federated.fedavg import FedAvg
model, steps, P = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
V = min(P, 20)  # the bundled images; more problems are restarts of them
dm = VictimDataModule(Bundled("mnist"), FedAvg(local_steps=steps, local_lr=0.1), num_victims=V)
m = GradientInversion(model, (1, 28, 28), 10, labels="idlg", dummies=Dummies(restarts=P // V))
m.attach(dm.prepare(m.target))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(3):
    t = time.perf_counter()
    m.matching_loss().sum().backward()
    times.append(time.perf_counter() - t)
    m.dummy_data.grad = None
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_mib": (peak - before) / 1024, "peak_mib": peak / 1024, "time_s": sum(times) / 3}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lenet", "mlp"])
    ap.add_argument("--steps", nargs="+", type=int, default=[1, 2, 5, 10])
    ap.add_argument("--problems", type=int, default=20)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    print("| model | local_steps | problems | memory growth of one evaluation | ratio | peak RSS | time of one evaluation | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models:
        ref = None
        for steps in args.steps:
            out = subprocess.run([sys.executable, "-c", CHILD, model, str(steps), str(args.problems)], env=env,
                                 capture_output=True, text=True, cwd=REPO)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            ref = ref or r
            print(f"| {model} | {steps} | {args.problems} | {r['growth_mib']:.0f} MiB | "
                  f"{r['growth_mib'] / max(ref['growth_mib'], 1e-9):.1f}x | {r['peak_mib']:.0f} MiB | "
                  f"{1000 * r['time_s']:.0f} ms | {r['time_s'] / ref['time_s']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
