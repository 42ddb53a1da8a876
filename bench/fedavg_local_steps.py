"""Images reconstructed against FedAvg local steps: ``configs/mnist_fedavg.yaml`` on the 20 bundled
MNIST images, for each model and each ``local_steps``, one ``leakage fit`` per cell.

    OMP_NUM_THREADS=1 python bench/fedavg_local_steps.py [--models lenet mlp] [--steps 1 2 5 10]

Prints one row per cell: images reconstructed (SSIM >= 0.9), mean SSIM, label accuracy, the wall
time of the command and its peak resident memory, and the time ratio against the first cell of the
same model (its reference run in this invocation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(model: str, steps: int, out: Path, extra: list[str]) -> dict:
    save = out / f"{model}_{steps}"
    cmd = [sys.executable, "-c",
           "import resource, sys; from leakage.cli import main\n"
           "try:\n    main(sys.argv[1:])\nfinally:\n"
           "    print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)",
           "fit", "--config", str(REPO / "configs" / "mnist_fedavg.yaml"), "--model.model", model,
           "--data.client.local_steps", str(steps), "--trainer.logger.init_args.save_dir", str(save),
           "--trainer.enable_progress_bar", "false", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    rss = int([ln for ln in proc.stderr.splitlines() if ln.startswith("maxrss_kb")][-1].split()[1]) / 1024
    metrics = json.loads(next(save.glob("*/version_*/metrics.json")).read_text())
    rows = metrics["victims"]
    ok = sum(r["ssim"] >= metrics["success_ssim"] for r in rows)
    ssim = sum(r["ssim"] for r in rows) / len(rows)
    acc = sum(r["label_acc"] for r in rows) / len(rows)
    return {"model": model, "steps": steps, "ok": ok, "n": len(rows), "ssim": ssim, "acc": acc, "wall": wall, "rss": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lenet", "mlp"])
    ap.add_argument("--steps", nargs="+", type=int, default=[1, 2, 5, 10])
    ap.add_argument("extra", nargs="*", help="more `leakage fit` arguments (after --)")
    args = ap.parse_args()
    print("| model | local_steps | reconstructed | mean SSIM | label accuracy | wall time | time ratio | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            ref = None
            for steps in args.steps:
                r = run(model, steps, Path(tmp), args.extra)
                ref = ref or r["wall"]
                print(f"| {model} | {steps} | {r['ok']}/{r['n']} | {r['ssim']:.3f} | {100 * r['acc']:.0f}% | "
                      f"{r['wall']:.0f} s | {r['wall'] / ref:.1f}x | {r['rss']:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
