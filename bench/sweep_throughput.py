"""A sweep as one batched attack versus one fit per cell: wall time and whether the tables agree.

Runs ``leakage sweep --config CONFIG`` twice in the same invocation, each in its own child process
and output folder, one after the other: with ``--sweep.batch true`` (the cells that share the
attack's settings solved as problems of one fit: every defense's grid in one fit, then one fit per
bisection round) and with ``--sweep.batch false`` (one fit per cell, the reference). Prints both
wall times (the whole command, start-up included), their ratio, and whether the two sweeps agree:
the same cells with the same status and success counts, the same breaking points, and per-cell
mean SSIM / PSNR / MSE within a tolerance (printed with the largest differences seen).

    python bench/sweep_throughput.py                                   # configs/defense_sweep.yaml
    python bench/sweep_throughput.py --data.num_victims 5 --sweep.refine 1   # a quick run
    python bench/sweep_throughput.py --order reference-first          # the reference runs first

Options it does not know are passed to both sweeps (fit options and ``--sweep.*`` settings).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: per-cell mean SSIM may differ by this much between the two: the problems are the same and
#: independent, but a batched convolution over more problems rounds differently (float32), and
#: L-BFGS carries that on (README, "A sweep is one batched attack": measured differences)
SSIM_TOL = 0.02


def run_sweep(config: str, out: Path, batch: bool, extra: list[str]) -> float:
    """Wall time of one ``leakage sweep`` in a child process."""
    cmd = [sys.executable, "-m", "leakage.cli", "sweep", "--config", config, "--sweep.output", str(out),
           "--sweep.batch", "true" if batch else "false", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"sweep (batch={batch}) failed: {proc.stderr.strip().splitlines()[-1:]}")
    return elapsed


def rows(out: Path) -> dict[str, dict]:
    with open(out / "results.csv") as f:
        return {r["cell"]: r for r in csv.DictReader(f)}


def compare(a: Path, b: Path) -> tuple[bool, list[str]]:
    """Whether the sweeps in ``a`` and ``b`` agree, and what differs (or the largest differences)."""
    ra, rb = rows(a), rows(b)
    notes = []
    if sorted(ra) != sorted(rb):
        notes.append(f"different cells: {sorted(set(ra) ^ set(rb))}")
    diffs = {"ssim": 0.0, "psnr": 0.0, "mse": 0.0}
    for cell in sorted(set(ra) & set(rb)):
        x, y = ra[cell], rb[cell]
        for key in ("status", "victims", "success", "failed"):
            if x[key] != y[key]:
                notes.append(f"{cell}: {key} {x[key]} (batched) vs {y[key]} (one fit per cell)")
        if x["status"] == y["status"] == "ok":
            for key in diffs:
                diffs[key] = max(diffs[key], abs(float(x[key]) - float(y[key])))
    if diffs["ssim"] > SSIM_TOL:
        notes.append(f"mean SSIM differs by {diffs['ssim']:.2g} > {SSIM_TOL}")
    pa, pb = (json.loads((d / "breaking_points.json").read_text()) if (d / "breaking_points.json").exists() else []
              for d in (a, b))
    if [p.get("breaking_point") for p in pa] != [p.get("breaking_point") for p in pb]:
        notes.append(f"breaking points {[p.get('breaking_point') for p in pa]} vs {[p.get('breaking_point') for p in pb]}")
    agree = not notes
    notes.append("largest per-cell differences: " + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))
    return agree, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/defense_sweep.yaml")
    ap.add_argument("--out", default=None, help="folder for the two sweeps' outputs (default: a temporary one)")
    ap.add_argument("--order", default="batched-first", choices=["batched-first", "reference-first"])
    args, extra = ap.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out or tmp)
        outs = {True: base / "batched", False: base / "one_fit_per_cell"}
        times = {}
        for batch in ((True, False) if args.order == "batched-first" else (False, True)):
            times[batch] = run_sweep(args.config, outs[batch], batch, extra)
            print(f"{'batched' if batch else 'one fit per cell'}: {times[batch]:.1f} s", flush=True)
        agree, notes = compare(outs[True], outs[False])
        n = len(rows(outs[True]))
        fits = len({json.dumps(json.loads(p.read_text()).get("group_cells", [p.stem]))
                    for p in (outs[True] / "cells").glob("*.json")})
        print(f"\nleakage sweep --config {args.config} {' '.join(extra)}".rstrip())
        print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cpu count {os.cpu_count()}")
        print("| run | cells | fits | wall time (s) |\n|---|---|---|---|")
        print(f"| one fit per cell (--sweep.batch false) | {n} | {n} | {times[False]:.1f} |")
        print(f"| batched (--sweep.batch true) | {n} | {fits} | {times[True]:.1f} |")
        print(f"\nspeed-up: {times[False] / times[True]:.2f}x")
        print(f"tables agree: {'yes' if agree else 'NO'}")
        for note in notes:
            print(f"  {note}")


if __name__ == "__main__":
    main()
