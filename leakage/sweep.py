"""``leakage sweep``: the attack over a grid of defense strengths (with each defense's breaking
point), and studies over any ``fit`` config key (batch size, dataset, model, steps, ...).

A sweep config is a ``fit`` config (trainer, model, data: the attack and its victims) plus a
``sweep`` section with ``defenses``, ``studies`` or both::

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
      studies:
        - name: cifar10               # names the cells (cifar10.batch_size=4), the table and the plot
          key: data.batch_size        # a dotted path into the fit config, swept over `values`
          values: [1, 2, 4, 8, 16]    # run in this order; YAML types are kept (ints stay ints)
          set: {data.dataset: cifar10}          # optional: fixed dotted-key settings of this study
          per_value:                  # optional: extra dotted-key settings for single values
            2: {data.num_victims: 10}
          label: B                    # optional: the value column's header (default: B for a
                                      # batch size, else the key)

A defense cell adds the defense as the last of ``trainer.callbacks``; the sweep searches each
defense's breaking point. A study cell is the base config with, in this order, the study's ``set``,
``key: value`` and ``per_value[value]`` applied (setting a dotted key creates the sections it
needs; the value replaces what was there); studies run their grid only (no search). Fit options
given on the command line apply to every cell and take precedence over all of these (one that
sets a study's swept key is refused).

Every cell is one ``fit`` run in ``output/runs/<cell>/`` (TensorBoard events, metrics, gallery);
its summary (metrics, ``time_s``: the fit's wall time, ``entries_per_unknown``: gradient entries
per unknown input value) is written atomically to ``output/cells/<cell>.json`` when it completes.
A cell that cannot run (a bad setting, an unknown config key) is recorded as failed with a
one-line error. A sweep started again skips completed cells and redoes interrupted ones, so it
never loses or corrupts what it wrote. Tables (``results.csv``, ``results.md``), one plot per
defense and per study (``<name>.png``) and the TensorBoard hparams view are rebuilt from the cell
files after every cell.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

SWEEP_DEFAULTS = {"output": "logs/defense_sweep", "success_ssim": 0.6, "target_success": 0.1, "refine": 3}
METRICS = ("label_acc", "mse", "ssim", "psnr", "success_rate")
HEADERS = {"label_acc": "label accuracy", "mse": "MSE", "ssim": "SSIM", "psnr": "PSNR", "success_rate": "attack success rate"}
#: what a study's table and plot show, after the swept value
STUDY_METRICS = ("label_acc", "ssim", "psnr", "image_success_rate", "time_s", "entries_per_unknown")
STUDY_HEADERS = {"label_acc": "label accuracy", "ssim": "mean SSIM", "psnr": "PSNR",
                 "image_success_rate": "images reconstructed",
                 "time_s": "time (s)", "entries_per_unknown": "gradient entries per unknown"}
STUDY_FIELDS = ("name", "key", "values", "set", "per_value", "label")
CSV_FIELDS = ("defense", "param", "study", "key", "value", "status", "victims", "failed", "success", *METRICS,
              "images", "image_success", "image_success_rate", "time_s", "entries_per_unknown", "cell", "error")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")
_UNKNOWN_KEY = re.compile(r"does not accept option '([^']+)'")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fmt(value: Any) -> str:
    """A value as it appears in cell ids and tables: 0.01, 4, true, cifar10."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _md_table(label: str, columns: list[str], rows: list[dict], cells: Callable[[dict], list[str]]) -> list[str]:
    """Markdown lines of a table: the swept value, then ``cells(row)``; a failed cell says why."""
    lines = [f"| {label} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for r in rows:
        body = cells(r) if r.get("status") == "ok" else [f"failed: {r.get('error', '')}"] + [""] * (len(columns) - 1)
        lines.append(f"| {_fmt(r['value'])} | " + " | ".join(body) + " |")
    return lines + [""]


def _cell_id(defense: str, value: float) -> str:
    return f"{defense}={value:.6g}"


def _study_cell_id(study: dict, value: Any) -> str:
    return _UNSAFE.sub("_", f"{study['name']}.{study['key'].rsplit('.', 1)[-1]}={_fmt(value)}")


def _set_key(cfg: dict, dotted: str, value: Any) -> None:
    """``cfg[a][b][c] = value`` for ``a.b.c``, creating the sections on the way."""
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {dotted!r}: {'.'.join(parts[:i + 1])!r} is {node!r}, not a section")
    node[parts[-1]] = value


def _check_dotted(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
        raise ValueError(f"{where}: a config key must be a dotted path like data.batch_size, got {key!r}")
    if key.split(".")[0] == "sweep":
        raise ValueError(f"{where}: {key!r} is a sweep setting, not a fit config key")
    return key


def _check_settings(settings: Any, where: str) -> dict:
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ValueError(f"{where} must map dotted config keys to values, got {settings!r}")
    for k in settings:
        _check_dotted(k, where)
    return dict(settings)


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


def _check_study(s: Any) -> dict:
    if not isinstance(s, dict):
        raise ValueError(f"a sweep study must be a mapping with name, key and values, got {s!r}")
    for field in ("name", "key", "values"):
        if field not in s:
            raise ValueError(f"sweep study entry {s.get('name', s)!r} needs '{field}'")
    name = str(s["name"])
    where = f"sweep study {name!r}"
    unknown = sorted(set(s) - set(STUDY_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; a study has {', '.join(STUDY_FIELDS)}")
    if not isinstance(s["values"], list) or not s["values"]:
        raise ValueError(f"{where}: values must be a non-empty list, got {s['values']!r}")
    study = {"name": name, "key": _check_dotted(s["key"], where), "values": list(s["values"]),
             "set": _check_settings(s.get("set"), f"{where}: set")}
    leaf = study["key"].rsplit(".", 1)[-1]
    study["label"] = str(s.get("label") or ("B" if leaf == "batch_size" else study["key"]))
    per_value = s.get("per_value") or {}
    if not isinstance(per_value, dict):
        raise ValueError(f"{where}: per_value must map values to settings, got {per_value!r}")
    study["per_value"] = []  # [(value, settings)], matched by value or by its text
    for v, settings in per_value.items():
        if not any(v == x or _fmt(v) == _fmt(x) for x in study["values"]):
            raise ValueError(f"{where}: per_value {v!r} is not one of its values {study['values']}")
        study["per_value"].append((v, _check_settings(settings, f"{where}: per_value {v!r}")))
    cells = [_study_cell_id(study, v) for v in study["values"]]
    if len(set(cells)) != len(cells):
        raise ValueError(f"{where}: values must be distinct, got {study['values']}")
    return study


def _defense_class(class_path: str):
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"unknown defense class {class_path!r}") from None


def _cell_error(err: Exception) -> str:
    """One line that says why a cell could not run."""
    from .errors import OWN_PHRASES, one_line

    text = str(err)
    if isinstance(err, argparse.ArgumentError):  # the fit parser (exit_on_error=False) rejected the config
        m = _UNKNOWN_KEY.search(text)
        if m:
            return f"unknown config key {m.group(1)!r}: `leakage fit` has no such option (see `leakage fit --help`)"
        lines = [ln.strip().lstrip("- ").strip() for ln in text.splitlines() if ln.strip()]
        own = [ln for ln in lines[1:] if OWN_PHRASES.search(ln)]
        line = own[-1] if own else " ".join(lines[:2])
        return re.sub(r'^Parser key "([^"]+)":', r"invalid value for \1:", line)[:300]
    return one_line(err)[:300]


class Sweep:
    """Run the grids, resume them, and summarize them."""

    def __init__(self, base: dict, sweep: dict, overrides: list[str]) -> None:
        self.base = base
        self.cfg = {**SWEEP_DEFAULTS, **sweep}
        defenses, studies = self.cfg.get("defenses") or [], self.cfg.get("studies") or []
        if not isinstance(defenses, list) or not isinstance(studies, list) or not (defenses or studies):
            raise ValueError("the sweep section needs a list of defenses or a list of studies (or both)")
        if not 0 <= float(self.cfg["target_success"]) < 1:
            raise ValueError(f"sweep target_success must be in [0, 1), got {self.cfg['target_success']}")
        self.defenses = [_check_defense(d) for d in defenses]
        for d in self.defenses:
            _defense_class(d["class_path"])
        self.studies = [_check_study(s) for s in studies]
        names = [d["name"] for d in self.defenses] + [s["name"] for s in self.studies]
        if len(set(names)) != len(names):
            raise ValueError(f"sweep defense and study names must be unique, got {names}")
        for s in self.studies:
            for o in overrides:
                if o == f"--{s['key']}" or o.startswith(f"--{s['key']}="):
                    raise ValueError(f"the fit option {o.split('=')[0]} would override the key that study "
                                     f"{s['name']!r} sweeps")
        self.overrides = overrides
        self.out = Path(self.cfg["output"])
        (self.out / "cells").mkdir(parents=True, exist_ok=True)
        (self.out / "runs").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ cells
    def cell_path(self, cid: str) -> Path:
        return self.out / "cells" / f"{cid}.json"

    def cell(self, cid: str, row: dict, make_config: Callable[[], dict]) -> dict:
        """The cell's summary, running it unless a completed result is on disk.

        ``make_config`` builds the cell's fit config; an error there fails the cell like an error
        in the fit does.
        """
        path = self.cell_path(cid)
        try:
            cfg, error = make_config(), None
        except (ValueError, TypeError) as err:
            cfg, error = None, err
        fingerprint = self.fingerprint(cfg)
        if path.exists():
            try:
                done = json.loads(path.read_text())
            except json.JSONDecodeError:
                done = None  # cannot happen with atomic writes, but never trust a broken file
            if done is not None and done.get("fingerprint") == fingerprint:
                return done
            if done is not None:  # a result of another attack or victim set: never reuse it
                print(f"leakage sweep: cell {cid} was run with another configuration; running it again",
                      file=sys.stderr)
            path.unlink()
        row = {**row, "cell": cid, "fingerprint": fingerprint}
        if error is not None:
            row.update(status="failed", error=_cell_error(error))
        else:
            row = self._run(cid, cfg, row)
        _atomic_write(path, json.dumps(row, indent=2))
        self.write_tables()
        return row

    def fingerprint(self, cfg: dict | None) -> str:
        """What a cell's result depends on: its fit config, the command-line overrides, the success bar."""
        text = json.dumps({"config": cfg, "overrides": self.overrides, "success_ssim": float(self.cfg["success_ssim"])},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def defense_config(self, defense: dict, value: float) -> dict:
        """The base config with the defense appended to the trainer's callbacks."""
        init_args = {**defense["init_args"], defense["param"]: value}
        _defense_class(defense["class_path"])(**init_args)  # a clear error for a bad setting
        cfg = json.loads(json.dumps(self.base))
        trainer = cfg.setdefault("trainer", {})
        trainer["callbacks"] = [*(trainer.get("callbacks") or []),
                                {"class_path": defense["class_path"], "init_args": init_args}]
        return cfg

    def result(self, defense: dict, value: float) -> dict:
        """A defense cell."""
        return self.cell(_cell_id(defense["name"], value),
                         {"defense": defense["name"], "param": defense["param"], "value": value},
                         lambda: self.defense_config(defense, value))

    def current(self, row: dict) -> bool:
        """Whether a cell file on disk was computed with this sweep's configuration."""
        try:
            if "study" in row:
                study = next(s for s in self.studies if s["name"] == row["study"])
                cfg = self.study_config(study, row["value"])
            else:
                defense = next(d for d in self.defenses if d["name"] == row["defense"])
                cfg = self.defense_config(defense, row["value"])
        except StopIteration:
            return False  # a defense or study this sweep no longer has
        except (ValueError, TypeError, KeyError):
            cfg = None
        return row.get("fingerprint") == self.fingerprint(cfg)

    def study_config(self, study: dict, value: Any) -> dict:
        """The base config with the study's ``set``, ``key: value`` and ``per_value[value]`` applied."""
        cfg = json.loads(json.dumps(self.base))
        for k, v in study["set"].items():
            _set_key(cfg, k, v)
        _set_key(cfg, study["key"], value)
        for v, settings in study["per_value"]:
            if v == value or _fmt(v) == _fmt(value):
                for k, x in settings.items():
                    _set_key(cfg, k, x)
        return cfg

    def study_result(self, study: dict, value: Any) -> dict:
        return self.cell(_study_cell_id(study, value), {"study": study["name"], "key": study["key"], "value": value},
                         lambda: self.study_config(study, value))

    def _run(self, cid: str, cfg: dict, row: dict) -> dict:
        """One full in-process ``fit`` of ``cfg`` as cell ``cid``; its summary added to ``row``."""
        from argparse import ArgumentError

        from lightning.fabric.utilities.exceptions import MisconfigurationException

        from .attack import GradientInversion
        from .callbacks import summarize
        from .fit import TRAINER_DEFAULTS, LeakageCLI
        from .data import VictimDataModule

        run_dir = self.out / "runs" / cid
        if run_dir.exists():  # an interrupted run of this cell: start it again from scratch
            shutil.rmtree(run_dir)
        cfg = json.loads(json.dumps(cfg))
        trainer = cfg.get("trainer")
        if not isinstance(trainer, dict):
            trainer = cfg["trainer"] = {}
        trainer["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                             "init_args": {"save_dir": str(self.out), "name": "runs", "version": cid}}
        trainer.setdefault("enable_progress_bar", False)
        report_cfg = cfg.get("report")
        if not isinstance(report_cfg, dict):
            report_cfg = cfg["report"] = {}
        report_cfg["success_ssim"] = float(self.cfg["success_ssim"])
        cfg_path = self.out / "cells" / f"{cid}.config.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        try:
            with warnings.catch_warnings():  # the sweep passes its cells' args on purpose
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                start = time.perf_counter()
                cli = LeakageCLI(GradientInversion, VictimDataModule, trainer_defaults=TRAINER_DEFAULTS,
                                 save_config_kwargs={"overwrite": True},
                                 parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False}},
                                 args=["fit", "--config", str(cfg_path), *self.overrides])
                elapsed = time.perf_counter() - start
            report = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "LeakageReport")
        except (ValueError, TypeError, FileNotFoundError, RuntimeError, ArgumentError,
                MisconfigurationException) as err:
            return {**row, "status": "failed", "error": _cell_error(err)}
        s = summarize(report.rows, float(self.cfg["success_ssim"]))
        if "success" not in s:
            return {**row, "status": "failed", "error": "a sweep needs victim images (not source=gradients)"}
        row.update(status="ok", victims=s["victims"], failed=s["failed"], success=s["success"],
                   success_rate=s["success"] / s["victims"], images=s["images"], image_success=s["image_success"],
                   image_success_rate=s["image_success"] / s["images"], label_acc=s["label_acc"], mse=s["mse_mean"],
                   ssim=s["ssim_mean"], psnr=s["psnr_mean"], time_s=elapsed,
                   entries_per_unknown=float(report.summary["entries_per_unknown"]),
                   dataset=cli.datamodule.dataset, model=cli.model.hparams.model,
                   defenses=report.defenses_of(cli.trainer))
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
        """Every defense's breaking point (returned), then every study's grid."""
        points = [self.breaking_point(d) for d in self.defenses]
        if self.defenses:
            _atomic_write(self.out / "breaking_points.json", json.dumps(points, indent=2))
        for s in self.studies:
            for v in s["values"]:
                self.study_result(s, v)
        self.write_tables(points)
        return points

    # ---------------------------------------------------------------- output
    def rows(self) -> list[dict]:
        out = []
        for f in sorted((self.out / "cells").glob("*.json")):
            try:
                row = json.loads(f.read_text())
            except json.JSONDecodeError:
                continue
            if self.current(row):  # cells left by another configuration in the same folder are not shown
                out.append(row)
        return out

    def _study_rows(self, rows: list[dict], study: dict) -> list[dict]:
        """The study's cells in the order of its values."""
        cells = {_study_cell_id(study, v): i for i, v in enumerate(study["values"])}
        return sorted((r for r in rows if r.get("study") == study["name"] and r.get("cell") in cells),
                      key=lambda r: cells[r["cell"]])

    def write_tables(self, points: list[dict] | None = None) -> str:
        rows = self.rows()
        defense_rows = sorted((r for r in rows if "defense" in r), key=lambda r: (r["defense"], r["value"]))
        order = {_study_cell_id(s, v): (i, j) for i, s in enumerate(self.studies) for j, v in enumerate(s["values"])}
        study_rows = sorted((r for r in rows if "study" in r),
                            key=lambda r: (*order.get(r["cell"], (len(order), 0)), r["cell"]))
        with open(self.out / "results.csv.tmp", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
            w.writeheader()
            for r in defense_rows + study_rows:
                w.writerow(r)
        os.replace(self.out / "results.csv.tmp", self.out / "results.csv")
        md = [f"Attack success: SSIM >= {self.cfg['success_ssim']}" +
              (f"; a defense holds at a success rate <= {float(self.cfg['target_success']):.0%}." if self.defenses
               else "."), ""]
        for d in self.defenses:
            mine = sorted((r for r in rows if r.get("defense") == d["name"]), key=lambda r: r["value"],
                          reverse=d["stronger"] == "smaller")
            if not mine:
                continue
            desc = ", ".join(f"{k}={v}" for k, v in d["init_args"].items())
            md.append(f"### {d['name']} ({d['class_path'].rsplit('.', 1)[-1]}{', ' + desc if desc else ''})")
            md.append("")
            md += _md_table(d["param"], [HEADERS[m] for m in METRICS], mine, lambda r: [
                f"{100 * r['label_acc']:.0f}%", f"{r['mse']:.4f}", f"{r['ssim']:.3f}", f"{r['psnr']:.2f}",
                f"{100 * r['success_rate']:.0f}% ({r['success']}/{r['victims']})"])
        for s in self.studies:
            mine = self._study_rows(rows, s)
            if not mine:
                continue
            md.append(f"### {s['name']} ({s['key']})")
            md.append("")
            columns = ["label accuracy", "mean SSIM", "PSNR", f"images with SSIM >= {self.cfg['success_ssim']}",
                       "client updates", "time (s)", "gradient entries per unknown"]
            md += _md_table(s["label"], columns, mine, lambda r: [
                f"{100 * r['label_acc']:.0f}%", f"{r['ssim']:.3f}", f"{r['psnr']:.2f}",
                f"{100 * r['image_success_rate']:.0f}% ({r['image_success']}/{r['images']})", str(r["victims"]),
                f"{r['time_s']:.1f}", f"{r['entries_per_unknown']:.2f}"])
            ok = [r for r in mine if r.get("status") == "ok"]
            setup = [f"{what}: {', '.join(dict.fromkeys(str(r[what]) for r in ok))}"
                     for what in ("dataset", "model") if any(what in r for r in ok)]
            if setup:
                md.append("; ".join(setup) + f"; success: SSIM >= {self.cfg['success_ssim']}.")
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
            mine = sorted((r for r in rows if r.get("defense") == d["name"] and r.get("status") == "ok"),
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

        for s in self.studies:
            mine = [r for r in self._study_rows(rows, s) if r.get("status") == "ok"]
            if not mine:
                continue
            values = [r["value"] for r in mine]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            xs = values if numeric else list(range(len(values)))
            fig, axes = plt.subplots(2, 3, figsize=(10, 6))
            for ax, m in zip(axes.flat, STUDY_METRICS):
                ax.plot(xs, [r.get(m, float("nan")) for r in mine], "o-")
                ax.set_title(STUDY_HEADERS[m], fontsize=9)
                ax.set_xlabel(s["label"])
                if m in ("label_acc", "image_success_rate"):
                    ax.set_ylim(-0.05, 1.05)
                if numeric and all(v > 0 for v in values):
                    ints = all(isinstance(v, int) for v in values)
                    ax.set_xscale("log", base=2 if ints else 10)
                    if ints:
                        ax.set_xticks(values, [str(v) for v in values])
                        ax.minorticks_off()
                elif not numeric:
                    ax.set_xticks(xs, [_fmt(v) for v in values])
            fig.suptitle(f"{s['name']}: attack against {s['key']}", fontsize=9)
            fig.tight_layout()
            fig.savefig(self.out / f"{s['name']}.png", dpi=110)
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
                if "study" in r:
                    v = r["value"]
                    hparams = {"study": r["study"], "value": v if isinstance(v, (bool, int, float, str)) else str(v)}
                else:
                    hparams = {"defense": r["defense"], "strength": r["value"]}
                metrics = {f"hparam/{m}": r[m] for m in (*METRICS, "image_success_rate", "time_s", "entries_per_unknown")
                           if isinstance(r.get(m), (int, float))}
                w.add_hparams(hparams, metrics, run_name=r["cell"])


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
    made = "results.csv, results.md" + (", breaking_points.json" if sweep.defenses else "")
    print(f"sweep results in {sweep.out}/ ({made}, plots; tensorboard --logdir {sweep.out})", file=sys.stderr)
