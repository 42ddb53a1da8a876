"""``leakage fit`` on 1 process against N processes (``--trainer.strategy ddp``), in one invocation.

Runs the real console command (``python -m leakage.cli fit --config CONFIG ...``) once on one
process and once on N (Lightning launches the other ranks; CPU: gloo, GPU: nccl), alternating
``--repeat`` times, and prints each run's wall time (launch, data, attack and report included),
the ratio to the 1-process run of the same round, and whether the per-victim results agree: the
largest SSIM difference over the victims, the reconstructed counts and the recovered labels.

    python bench/distributed.py                                   # configs/cifar_fast.yaml, 1 vs 2 CPU processes
    python bench/distributed.py --processes 4 --accelerator gpu   # 1 vs 4 GPUs
    python bench/distributed.py --config configs/cifar_dlg.yaml --repeat 2 -- --trainer.max_steps 50
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(config: str, processes: int, accelerator: str, out: Path, extra: list[str]) -> tuple[float, list[dict]]:
    """One ``leakage fit``: its wall time and its metrics.csv rows."""
    args = [sys.executable, "-m", "leakage.cli", "fit", "--config", config,
            "--trainer.logger.init_args.save_dir", str(out), "--trainer.enable_progress_bar", "false",
            "--trainer.accelerator", accelerator, *extra]
    if processes > 1:
        args += ["--trainer.strategy", "ddp", "--trainer.devices", str(processes)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"run on {processes} process(es) failed:\n{proc.stderr[-3000:]}")
    (table,) = out.glob("*/version_*/metrics.csv")
    with open(table, newline="") as f:
        return wall, list(csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/cifar_fast.yaml")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--success-ssim", type=float, default=0.9)
    ap.add_argument("extra", nargs="*", help="more fit options, after --")
    a = ap.parse_args()
    print(f"{a.config}: 1 vs {a.processes} processes on {a.accelerator}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeat):
            one_s, one = run(a.config, 1, a.accelerator, Path(tmp) / f"one{r}", a.extra)
            many_s, many = run(a.config, a.processes, a.accelerator, Path(tmp) / f"many{r}", a.extra)
            assert [x["indices"] for x in one] == [x["indices"] for x in many]
            dssim = max(abs(float(x["ssim"]) - float(y["ssim"])) for x, y in zip(one, many))
            ok = [sum(float(x["ssim"]) >= a.success_ssim and x["status"] == "ok" for x in rows) for rows in (one, many)]
            labels = all(x["recovered_labels"] == y["recovered_labels"] for x, y in zip(one, many))
            print(f"round {r + 1}: 1 process {one_s:.1f} s, {a.processes} processes {many_s:.1f} s "
                  f"(ratio {one_s / many_s:.2f}x); reconstructed {ok[0]}/{len(one)} vs {ok[1]}/{len(many)}, "
                  f"max |SSIM difference| {dssim:.2g}, same recovered labels: {labels}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
