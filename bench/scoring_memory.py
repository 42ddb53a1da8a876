"""Peak memory of scoring one batch (matching its slots to the truth, then SSIM/PSNR/MSE or TabLeak's
accuracy) against the batch size B.

    python bench/scoring_memory.py                                  # MNIST-sized images, B = 64 ... 1024
    python bench/scoring_memory.py --data cifar10 --sizes 64 256
    python bench/scoring_memory.py --data adult --sizes 64 128 256 512 900

Each B runs in a fresh process (one thread) that builds a victim batch ``[1, B, *sample_shape]`` and a
reconstruction of it (the slots shuffled, Gaussian noise of 0.05 on images), then scores it with the
kind's ``evaluate``, as the report does. Printed per B: the growth of the process's peak resident set
(``ru_maxrss``) over its peak before scoring, in MiB, that growth against the first B's (linear memory:
it grows as B does, quadratic: as B^2), and the seconds of scoring. Images are random pixels
(uniform); tables the first B complete bundled Adult records (at most 927). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

WORKER = r"""
import resource, sys, time
import torch
torch.set_num_threads(1)
data, B = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(0)
if data == "adult":
    from leakage.data.datamodule import VictimDataModule
    from leakage.data.sources import BundledTable
    dm = VictimDataModule(BundledTable("adult"), batch_size=1)
    kind, records = dm.table[0], dm.table[1]
    truth = records[:B][None]
    recon = truth[:, torch.randperm(B, generator=g)].clone()
else:
    from leakage.data.kinds import ImageKind
    kind = ImageKind({"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}[data])
    truth = torch.rand(1, B, *kind.sample_shape, generator=g)
    recon = (truth[:, torch.randperm(B, generator=g)] + 0.05 * torch.randn(truth.shape, generator=g)).clamp(0, 1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
metrics = kind.evaluate(recon, truth)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(max(0, after - before) / 1024, seconds, float(metrics["score"][0]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["mnist", "cifar10", "adult"], default="mnist")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    args = parser.parse_args()
    print(f"| {args.data}: B | peak growth (MiB) | against B = {args.sizes[0]} | B / {args.sizes[0]} | score | s |")
    print("|---|---|---|---|---|---|")
    first = None
    for b in args.sizes:
        proc = subprocess.run([sys.executable, "-c", WORKER, args.data, str(b)], capture_output=True, text=True,
                              env=None)
        if proc.returncode != 0:
            print(f"| {b} | failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]} | | | | |", flush=True)
            continue
        mb, seconds, score = (float(x) for x in proc.stdout.split())
        first = first if first is not None else max(mb, 1e-9)
        print(f"| {b} | {mb:.1f} | {mb / first:.2f}x | {b / args.sizes[0]:g}x | {score:.3f} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
