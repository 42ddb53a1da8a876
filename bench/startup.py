"""What a ``leakage`` process pays before it does anything: the CPU seconds of importing torch, Lightning
and then the package, each in a fresh process (the console command, every rank of a sharded run, every
test that starts one).

    python bench/startup.py              # 3 fresh processes, the median of each stage
    python bench/startup.py --runs 5

CPU seconds (``time.process_time``), not wall-clock: they hold on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("torch", "lightning.pytorch", "leakage.cli")
_PROBE = """
import time
t = time.process_time()
for name in {stages!r}:
    __import__(name)
    now = time.process_time()
    print(name, now - t)
    t = now
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes (default 3)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    seen: dict[str, list[float]] = {s: [] for s in STAGES}
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", _PROBE.format(stages=STAGES)], env=env, capture_output=True,
                             text=True, check=True).stdout
        for line in out.splitlines():
            name, seconds = line.split()
            seen[name].append(float(seconds))
    print("| import (after the row above) | CPU s, median of", args.runs, "|\n|---|---|")
    for name, values in seen.items():
        print(f"| {name} | {statistics.median(values):.2f} |")
    print(f"| total | {sum(statistics.median(v) for v in seen.values()):.2f} |")


if __name__ == "__main__":
    main()
