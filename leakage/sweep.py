"""``leakage sweep``: the attack over a grid of defense strengths, and each defense's breaking point.

A sweep config is a ``fit`` config (trainer, model, data: the attack and its victims) plus a
``sweep`` section::

    sweep:
      output: logs/defense_sweep      # everything lands here
      success_ssim: 0.6               # a victim is reconstructed at SSIM >= this
      target_success: 0.1             # a defense holds when the success rate is <= this
      refine: 3                       # bisection steps between the last leaking and first holding value
      defenses:
        - name: noise
          class_path: leakage.defenses.GaussianNoise
          param: sigma                # the strength parameter, swept over `values`
          values: [0, 0.01, 0.1, 0.5, 1.0]
          stronger: larger            # larger values defend more ("smaller" for top-k keep ratios)
          init_args: {relative: false}

Every grid cell is one ``fit`` run in ``output/runs/<cell>/`` (TensorBoard events, metrics,
gallery); its summary is written atomically to ``output/cells/<cell>.json`` when it completes. A
sweep started again skips completed cells and redoes interrupted ones, so it never loses or
corrupts what it wrote. Tables (CSV, Markdown), plots and TensorBoard hparams are rebuilt from the
cell files after every cell.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

SWEEP_DEFAULTS = {"output": "logs/defense_sweep", "success_ssim": 0.6, "target_success": 0.1, "refine": 3}
METRICS = ("label_acc", "mse", "ssim", "psnr", "success_rate")
HEADERS = {"label_acc": "label accuracy", "mse": "MSE", "ssim": "SSIM", "psnr": "PSNR", "success_rate": "attack success rate"}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cell_id(defense: str, value: float) -> str:
    return f"{defense}={value:.6g}"


def _check_defense(d: dict) -> dict:
    for key in ("name", "class_path", "param", "values"):
        if key not in d:
            raise ValueError(f"sweep defense entry {d.get('name', d)!r} needs '{key}'")
    if not d["values"]:
        raise ValueError(f"sweep defense {d['name']!r} has no values")
    stronger = d.get("stronger", "larger")
    if stronger not in ("larger", "smaller"):
        raise ValueError(f"sweep defense {d['name']!r}: stronger must be 'larger' or 'smaller', got {stronger!r}")
    return {**d, "stronger": stronger, "init_args": dict(d.get("init_args") or {}),
            "values": sorted({float(v) for v in d["values"]}, reverse=stronger == "smaller")}


def _defense_class(class_path: str):
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"unknown defense class {class_path!r}") from None


class Sweep:
    """Run the grid, resume it, and summarize it."""

    def __init__(self, base: dict, sweep: dict, overrides: list[str]) -> None:
        self.base = base
        self.cfg = {**SWEEP_DEFAULTS, **sweep}
        if not self.cfg.get("defenses"):
            raise ValueError("the sweep section needs a list of defenses")
        if not 0 <= float(self.cfg["target_success"]) < 1:
            raise ValueError(f"sweep target_success must be in [0, 1), got {self.cfg['target_success']}")
        self.defenses = [_check_defense(d) for d in self.cfg["defenses"]]
        for d in self.defenses:
            _defense_class(d["class_path"])
        names = [d["name"] for d in self.defenses]
        if len(set(names)) != len(names):
            raise ValueError(f"sweep defense names must be unique, got {names}")
        self.overrides = overrides
        self.out = Path(self.cfg["output"])
        (self.out / "cells").mkdir(parents=True, exist_ok=True)
        (self.out / "runs").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ cells
    def cell_path(self, cid: str) -> Path:
        return self.out / "cells" / f"{cid}.json"

    def result(self, defense: dict, value: float) -> dict:
        """The cell's summary, running it unless a completed result is on disk."""
        cid = _cell_id(defense["name"], value)
        path = self.cell_path(cid)
        if path.exists():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                path.unlink()  # cannot happen with atomic writes, but never trust a broken file
        row = self._run(defense, value, cid)
        _atomic_write(path, json.dumps(row, indent=2))
        self.write_tables()
        return row

    def _run(self, defense: dict, value: float, cid: str) -> dict:
        from .attack import GradientInversion
        from .callbacks import summarize
        from .cli import TRAINER_DEFAULTS, LeakageCLI
        from .data import VictimDataModule

        run_dir = self.out / "runs" / cid
        if run_dir.exists():  # an interrupted run of this cell: start it again from scratch
            shutil.rmtree(run_dir)
        cfg = json.loads(json.dumps(self.base))
        trainer = cfg.setdefault("trainer", {})
        callbacks = list(trainer.get("callbacks") or [])
        callbacks.append({"class_path": defense["class_path"],
                          "init_args": {**defense["init_args"], defense["param"]: value}})
        trainer["callbacks"] = callbacks
        trainer["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                             "init_args": {"save_dir": str(self.out), "name": "runs", "version": cid}}
        trainer.setdefault("enable_progress_bar", False)
        cfg.setdefault("report", {})["success_ssim"] = float(self.cfg["success_ssim"])
        cfg_path = self.out / "cells" / f"{cid}.config.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        row: dict[str, Any] = {"defense": defense["name"], "param": defense["param"], "value": value, "cell": cid}
        try:
            _defense_class(defense["class_path"])(**callbacks[-1]["init_args"])  # a clear error for a bad setting
            cli = LeakageCLI(GradientInversion, VictimDataModule, trainer_defaults=TRAINER_DEFAULTS,
                             save_config_kwargs={"overwrite": True},
                             args=["fit", "--config", str(cfg_path), *self.overrides])
            report = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "LeakageReport")
        except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
            return {**row, "status": "failed", "error": str(err).splitlines()[0][:300]}
        s = summarize(report.rows, float(self.cfg["success_ssim"]))
        row.update(status="ok", victims=s["victims"], failed=s["failed"], success=s["success"],
                   success_rate=s["success"] / s["victims"], label_acc=s["label_acc"], mse=s["mse_mean"],
                   ssim=s["ssim_mean"], psnr=s["psnr_mean"], defenses=report.defenses_of(cli.trainer))
        return row

    # ---------------------------------------------------------------- search
    def holds(self, row: dict) -> bool:
        return row.get("status") == "ok" and row["success_rate"] <= float(self.cfg["target_success"])

    def breaking_point(self, defense: dict) -> dict:
        """Weakest setting that holds, refined by bisection between the last leaking and first holding value."""
        # weakest first; cells that failed to run say nothing about leaking or holding
        done = [(v, self.result(defense, v)) for v in defense["values"]]
        values = [v for v, r in done if r.get("status") == "ok"]
        rows = [r for _, r in done if r.get("status") == "ok"]
        first = next((i for i, r in enumerate(rows) if self.holds(r)), None)
        if first is None:
            return {"defense": defense["name"], "param": defense["param"], "breaking_point": None,
                    "note": f"no tested {defense['param']} holds" + (f" (up to {values[-1]:g})" if values else "")}
        if first == 0:
            return {"defense": defense["name"], "param": defense["param"], "breaking_point": values[0],
                    "note": f"the weakest tested {defense['param']} ({values[0]:g}) already holds"}
        leak, hold = values[first - 1], values[first]
        for _ in range(int(self.cfg["refine"])):
            mid = math.sqrt(leak * hold) if leak > 0 and hold > 0 else (leak + hold) / 2
            if self.holds(self.result(defense, mid)):
                hold = mid
            else:
                leak = mid
        return {"defense": defense["name"], "param": defense["param"], "breaking_point": hold,
                "last_leaking": leak, "resolution": abs(hold - leak),
                "note": f"holds at {defense['param']} = {hold:.4g}, leaks at {leak:.4g}"}

    def run(self) -> list[dict]:
        points = [self.breaking_point(d) for d in self.defenses]
        _atomic_write(self.out / "breaking_points.json", json.dumps(points, indent=2))
        self.write_tables(points)
        return points

    # ---------------------------------------------------------------- output
    def rows(self) -> list[dict]:
        out = []
        for f in sorted((self.out / "cells").glob("*.json")):
            try:
                out.append(json.loads(f.read_text()))
            except json.JSONDecodeError:
                continue
        return out

    def write_tables(self, points: list[dict] | None = None) -> str:
        rows = self.rows()
        with open(self.out / "results.csv.tmp", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["defense", "param", "value", "status", "victims", "failed", "success",
                                              *METRICS, "cell", "error"], extrasaction="ignore")
            w.writeheader()
            for r in sorted(rows, key=lambda r: (r["defense"], r["value"])):
                w.writerow(r)
        os.replace(self.out / "results.csv.tmp", self.out / "results.csv")
        md = [f"Attack success: SSIM >= {self.cfg['success_ssim']}; a defense holds at a success rate <= "
              f"{float(self.cfg['target_success']):.0%}.", ""]
        for d in self.defenses:
            mine = sorted((r for r in rows if r["defense"] == d["name"]), key=lambda r: r["value"],
                          reverse=d["stronger"] == "smaller")
            if not mine:
                continue
            desc = ", ".join(f"{k}={v}" for k, v in d["init_args"].items())
            md.append(f"### {d['name']} ({d['class_path'].rsplit('.', 1)[-1]}{', ' + desc if desc else ''})")
            md.append("")
            md.append(f"| {d['param']} | " + " | ".join(HEADERS[m] for m in METRICS) + " |")
            md.append("|---" * (len(METRICS) + 1) + "|")
            for r in mine:
                if r.get("status") != "ok":
                    md.append(f"| {r['value']:g} | failed: {r.get('error', '')} |" + " |" * (len(METRICS) - 1))
                    continue
                md.append(f"| {r['value']:g} | {100 * r['label_acc']:.0f}% | {r['mse']:.4f} | {r['ssim']:.3f} | "
                          f"{r['psnr']:.2f} | {100 * r['success_rate']:.0f}% ({r['success']}/{r['victims']}) |")
            md.append("")
        if points:
            md.append("### Breaking points")
            md.append("")
            for p in points:
                md.append(f"- {p['defense']}: {p['note']}" +
                          (f" (resolution {p['resolution']:.3g})" if p.get("resolution") is not None else ""))
            md.append("")
        text = "\n".join(md)
        _atomic_write(self.out / "results.md", text)
        self._plots(rows, points or [])
        self._hparams(rows)
        return text

    def _plots(self, rows: list[dict], points: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        for d in self.defenses:
            mine = sorted((r for r in rows if r["defense"] == d["name"] and r.get("status") == "ok"),
                          key=lambda r: r["value"])
            if not mine:
                continue
            xs = [r["value"] for r in mine]
            fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3))
            positive = [x for x in xs if x > 0]
            for ax, m in zip(axes, METRICS):
                ax.plot(xs, [r[m] for r in mine], "o-")
                ax.set_title(HEADERS[m], fontsize=9)
                ax.set_xlabel(d["param"])
                if positive and len(positive) == len(xs):
                    ax.set_xscale("log")
                elif positive:  # a zero setting (no defense) on a log-like axis
                    ax.set_xscale("symlog", linthresh=min(positive))
                for p in points:
                    if p["defense"] == d["name"] and p.get("breaking_point") is not None:
                        ax.axvline(p["breaking_point"], color="red", ls="--", lw=0.8)
            fig.suptitle(f"{d['name']}: attack against defense strength (red: breaking point)", fontsize=9)
            fig.tight_layout()
            fig.savefig(self.out / f"{d['name']}.png", dpi=110)
            plt.close(fig)

    def _hparams(self, rows: list[dict]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        tb_dir = self.out / "hparams"
        if tb_dir.exists():
            shutil.rmtree(tb_dir)
        with SummaryWriter(str(tb_dir)) as w:
            for r in rows:
                if r.get("status") != "ok":
                    continue
                w.add_hparams({"defense": r["defense"], "strength": r["value"]},
                              {f"hparam/{m}": r[m] for m in METRICS}, run_name=r["cell"])


def parse(args: list[str]) -> Sweep:
    ap = argparse.ArgumentParser(prog="leakage sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", required=True, help="sweep config(s), merged in order")
    for key, default in SWEEP_DEFAULTS.items():
        ap.add_argument(f"--sweep.{key}", dest=key, default=None, help=f"override sweep.{key} (default {default})")
    known, overrides = ap.parse_known_args(args)
    base: dict = {}
    for path in known.config:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"sweep config not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        for k, v in data.items():
            base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    sweep = base.pop("sweep", None)
    if not sweep:
        raise ValueError("a sweep config needs a 'sweep' section (see `leakage sweep --help`)")
    for key in SWEEP_DEFAULTS:
        if getattr(known, key) is not None:
            sweep[key] = type(SWEEP_DEFAULTS[key])(getattr(known, key))
    return Sweep(base, sweep, overrides)


def main(args: list[str]) -> None:
    sweep = parse(args)
    sweep.run()
    print("\n" + (sweep.out / "results.md").read_text())
    print(f"sweep results in {sweep.out}/ (results.csv, results.md, breaking_points.json, plots; "
          f"tensorboard --logdir {sweep.out})", file=sys.stderr)
