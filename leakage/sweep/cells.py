"""Running a sweep's cells: each one a full ``fit`` run, saved atomically, resumed, never reused
when its configuration changed."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from leakage.engine.distributed import launched_as_rank_zero
from leakage.reporting.runfiles import atomic_write, json_text
from leakage.sweep.config import check_sweep, defense_class, set_key
from leakage.sweep.fitargs import SCALE_KEYS, cell_error, cell_errors, scale_free, without_logger
from leakage.sweep.hparams import write_hparams
from leakage.sweep.lock import SweepLock
from leakage.sweep.paths import cell_id, confined, fmt, study_cell_id
from leakage.sweep.plots import write_plots
from leakage.sweep.report import threat_model, write_report
from leakage.sweep.search import breaking_point, breaking_points
from leakage.sweep.tables import results_tables


@dataclass(eq=False)
class _Pending:
    """A cell to run: its id, result file, row so far, fit config (or why it has none)."""

    cid: str
    path: Path
    row: dict
    cfg: dict | None
    error: Exception | None


class Sweep:
    """Run the grids, resume them, and summarize them.

    On several processes (``--trainer.strategy ddp --trainer.devices N``: Lightning's launcher
    re-runs the same ``leakage sweep`` command on every rank, or torchrun/SLURM start them) every rank
    runs this same loop and every cell's fit is sharded over the ranks; each rank gets the same
    gathered results, so all take the same decisions (skipped cells, breaking-point search). Only
    rank 0 writes: the lock, cell files, configs, tables, plots and the cells' runs.
    """

    def __init__(self, base: dict, sweep: dict, overrides: list[str]) -> None:
        self.writer = launched_as_rank_zero()
        #: the fits run on several processes (learnt from the first group's fit): cells are not grouped
        self._sharded = False
        self.base = base
        self.cfg, self.defenses, self.studies = check_sweep(sweep, overrides)
        self.overrides, dropped = without_logger(overrides)
        #: what could not be written (a full disk), and why: ``leakage sweep`` says so and exits with 1
        self.unwritten: dict[str, str] = {}
        self._unsaved: dict[str, dict] = {}  # cells whose file could not be written: still in the tables
        self.table = ""  # the last results.md, as printed at the end
        self.out = Path(self.cfg["output"])
        if dropped and self.writer:
            print(f"leakage sweep: not using {', '.join(dict.fromkeys(dropped))}: every cell's run files go to "
                  f"{self.out}/runs/<cell>/ (the sweep sets the logger)", file=sys.stderr)
        try:
            for folder in ("cells", "runs"):
                confined(self.out, folder).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"cannot use the sweep output {self.out}: {err.strerror or err}") from None

    # ------------------------------------------------------------------ cells
    def cell_path(self, cid: str) -> Path:
        return confined(self.out, "cells", f"{cid}.json")

    def cell(self, cid: str, row: dict, make_config: Callable[[], dict]) -> dict:
        """The cell's summary, running it unless a completed result is on disk.

        ``make_config`` builds the cell's fit config; an error there fails the cell like an error
        in the fit does.
        """
        return self.cells([(cid, row, make_config, None)])[0]

    def cells(self, requests: list[tuple[str, dict, Callable[[], dict], dict | None]]) -> list[dict]:
        """The summaries of the cells ``(cell id, row, make_config, defense)``, running those that have
        no completed result on disk: a defense cell (``defense``: the ``class_path`` and ``init_args``
        its config appends) in one fit with the other defense cells of the same attack (with
        ``sweep.batch``, see :mod:`leakage.sweep.batching`), every other cell in a fit of its own."""
        from leakage.sweep.batching import batchable, group_key

        done: dict[str, dict] = {}
        pending: list[tuple[_Pending, dict | None]] = []
        for cid, row, make_config, defense in requests:
            if cid in done or any(p.cid == cid for p, _ in pending):
                continue  # asked twice: computed once
            p = self._prepare(cid, row, make_config)
            if isinstance(p, dict):
                done[cid] = p
            elif p.error is not None:
                done[cid] = self._save(p, {**p.row, "status": "failed", "error": cell_error(p.error)})
            else:
                pending.append((p, defense))
        groups: dict[str, list[_Pending]] = {}
        alone: list[_Pending] = []
        for p, defense in pending:
            if self.cfg["batch"] and not self._sharded and defense is not None and batchable(defense):
                groups.setdefault(group_key(p.cfg, defense), []).append(p)
            else:
                alone.append(p)
        for group in groups.values():
            if len(group) == 1:
                alone.append(group[0])
                continue
            for p, row in zip(group, self._run_group(group, [d for q, d in pending if q in group])):
                done[p.cid] = self._save(p, row, tables=False)
            if self.writer:
                self.write_tables()  # once for the whole group
        for p in alone:
            done[p.cid] = self._save(p, self._run(p.cid, p.cfg, p.row))
        return [done[cid] for cid, *_ in requests]

    def _prepare(self, cid: str, row: dict, make_config: Callable[[], dict]) -> "dict | _Pending":
        """A completed result of the cell on disk, computed with its configuration, or the cell to run
        (a result of another configuration is deleted)."""
        path = self.cell_path(cid)
        try:
            cfg, error = make_config(), None
        except (ValueError, TypeError) as err:
            cfg, error = None, err
        fingerprint = self.fingerprint(cfg)
        if path.exists():
            try:
                done = _numbers(json.loads(path.read_text()))
            except ValueError:  # cannot happen with atomic writes, but never trust a broken file
                done = None
            if not isinstance(done, dict):
                done = None
            if done is not None and done.get("fingerprint") == fingerprint:
                return done
            if done is not None and self.writer:  # a result of another attack or victim set: never reuse it
                print(f"leakage sweep: cell {cid} was run with another configuration; running it again",
                      file=sys.stderr)
            if self.writer:
                path.unlink(missing_ok=True)
        return _Pending(cid, path, {**row, "cell": cid, "fingerprint": fingerprint}, cfg, error)

    def _save(self, p: "_Pending", row: dict, tables: bool = True) -> dict:
        """Write a cell's result (rank 0 only; every rank returns it); one that cannot be written (a
        full disk) stays in the tables of this sweep."""
        text = json_text(row, indent=2)  # strict JSON: a NaN metric is null (read back as NaN: _numbers)
        if self.writer and not self._write(f"cells/{p.cid}.json", lambda: atomic_write(p.path, text)):
            self._unsaved[p.cid] = row
        if tables and self.writer:
            self.write_tables()
        return row

    def fingerprint(self, cfg: dict | None) -> str:
        """What a cell's result depends on: its fit config, the command-line overrides, the success
        bar; not the number of processes it runs on (:data:`leakage.sweep.fitargs.SCALE_KEYS`)."""
        if isinstance(cfg, dict) and isinstance(cfg.get("trainer"), dict):
            cfg = {**cfg, "trainer": {k: v for k, v in cfg["trainer"].items() if k not in SCALE_KEYS}}
        text = json.dumps({"config": cfg, "overrides": scale_free(self.overrides),
                           "success_ssim": float(self.cfg["success_ssim"])},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @staticmethod
    def defense_spec(defense: dict, value: float) -> dict:
        """The callback entry a defense cell appends to ``trainer.callbacks``; a whole-number value of a
        parameter the defense takes as an integer (``SecureAggregation``'s ``clients``) is given as one."""
        param = inspect.signature(defense_class(defense["class_path"])).parameters.get(defense["param"])
        if param is not None and param.annotation in (int, "int") and float(value).is_integer():
            value = int(value)
        return {"class_path": defense["class_path"], "init_args": {**defense["init_args"], defense["param"]: value}}

    def defense_config(self, defense: dict, value: float) -> dict:
        """The base config with the defense appended to the trainer's callbacks."""
        spec = self.defense_spec(defense, value)
        defense_class(spec["class_path"])(**spec["init_args"])  # a clear error for a bad setting
        cfg = json.loads(json.dumps(self.base))
        trainer = cfg.setdefault("trainer", {})
        trainer["callbacks"] = [*(trainer.get("callbacks") or []), spec]
        return cfg

    def _defense_request(self, defense: dict, value: float) -> tuple:
        return (cell_id(defense["name"], value), {"defense": defense["name"], "param": defense["param"], "value": value},
                lambda: self.defense_config(defense, value), self.defense_spec(defense, value))

    def result(self, defense: dict, value: float) -> dict:
        """A defense cell."""
        return self.cells([self._defense_request(defense, value)])[0]

    def results(self, requests: list[tuple[dict, float]]) -> list[dict]:
        """Defense cells ``(defense, value)``: with ``sweep.batch``, those to run share fits."""
        return self.cells([self._defense_request(d, v) for d, v in requests])

    def current(self, row: dict) -> bool:
        """Whether a cell file on disk is a cell of this sweep, computed with its configuration."""
        try:
            if "study" in row:
                study = next(s for s in self.studies if s["name"] == row["study"])
                cid, make = study_cell_id(study, row["value"]), lambda: self.study_config(study, row["value"])
            else:
                defense = next(d for d in self.defenses if d["name"] == row["defense"])
                cid, make = cell_id(defense["name"], row["value"]), lambda: self.defense_config(defense, row["value"])
        except StopIteration:
            return False  # a defense or study this sweep no longer has
        except (ValueError, TypeError, KeyError):
            return False  # not a row this sweep writes
        if row.get("cell") != cid:
            return False
        try:
            cfg = make()
        except (ValueError, TypeError, KeyError):
            cfg = None
        return row.get("fingerprint") == self.fingerprint(cfg)

    def study_config(self, study: dict, value: Any) -> dict:
        """The base config with the study's ``set``, ``key: value`` and ``per_value[value]`` applied."""
        cfg = json.loads(json.dumps(self.base))
        for k, v in study["set"].items():
            set_key(cfg, k, v)
        set_key(cfg, study["key"], value)
        for v, settings in study["per_value"]:
            if v == value or fmt(v) == fmt(value):
                for k, x in settings.items():
                    set_key(cfg, k, x)
        return cfg

    def study_result(self, study: dict, value: Any) -> dict:
        return self.cell(study_cell_id(study, value), {"study": study["name"], "key": study["key"], "value": value},
                         lambda: self.study_config(study, value))

    def _fit_config(self, cid: str, cfg: dict) -> tuple[Path, Any]:
        """Write the config of cell ``cid``'s fit (its TensorBoard run ``runs/<cid>``, the sweep's
        success bar, no HPARAMS entry of its own) to ``cells/<cid>.config.yaml`` (rank 0; another
        rank to a private temporary folder, returned second: clean it up); its path."""
        cfg = json.loads(json.dumps(cfg))
        trainer = cfg.get("trainer")
        if not isinstance(trainer, dict):
            trainer = cfg["trainer"] = {}
        trainer["logger"] = {"class_path": "leakage.reporting.loggers.TensorBoardLogger",
                             "init_args": {"save_dir": str(self.out), "name": "runs", "version": cid}}
        trainer.setdefault("enable_progress_bar", False)
        report_cfg = cfg.get("report")
        if not isinstance(report_cfg, dict):
            report_cfg = cfg["report"] = {}
        report_cfg["success_ssim"] = float(self.cfg["success_ssim"])
        report_cfg["hparams"] = False  # the sweep's HPARAMS view has one row per cell (sweep/hparams.py)
        # rank 0 keeps the cell's config beside its result; another rank reads its own private copy
        private = None if self.writer else tempfile.TemporaryDirectory(prefix="leakage-cell-")
        cfg_path = confined(self.out, "cells", f"{cid}.config.yaml") if private is None else \
            Path(private.name) / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        return cfg_path, private

    def _fresh_run_dir(self, cid: str) -> Path:
        run_dir = confined(self.out, "runs", cid)
        if run_dir.exists() and self.writer:  # an interrupted run of this cell: start it again from scratch
            shutil.rmtree(run_dir)
        return run_dir

    def _summary(self, row: dict, report, dataset: str, model: str, defenses: list[dict], elapsed: float) -> dict:
        """``row`` with the cell's outcome from its report."""
        from leakage.records import summarize

        kind = report.kind  # the cell's headline score is the kind's (images: SSIM, tables: accuracy)
        bar = float(self.cfg["success_ssim"])
        s = summarize(report.rows, bar)
        if f"{kind.score_name}_mean" not in s:
            return {**row, "status": "failed", "error": "a sweep needs the victims' data (not source=gradients)"}
        success = sum(r[kind.score_name] >= bar for r in report.rows if r["status"] != "failed")
        # what the per-unit success counts: every image of a batch (images), else every victim (a table's
        # rows are scored together, TabLeak's accuracy over the batch)
        units = s.get("images", s["victims"])
        unit_success = s.get("image_success", success)
        nan = float("nan")
        return {**row, "status": "ok", "victims": s["victims"], "failed": s["failed"], "success": success,
                "success_rate": success / s["victims"], "images": units,
                "image_success": unit_success, "image_success_rate": unit_success / units,
                "score": s[f"{kind.score_name}_mean"], "score_label": kind.score_label, "success_unit": kind.success_unit,
                "label_acc": s["label_acc"], **{key: s.get(f"{key}_mean", nan) for key, _, _ in kind.summary_metrics},
                "kind": kind.name,
                "time_s": elapsed, "entries_per_unknown": float(report.summary["entries_per_unknown"]),
                # victims proven exact (a closed form's certificate, leakage.attacks.closedform; 0 for a search)
                "exact": int(report.summary.get("exact", 0)),
                "threat_model": getattr(report, "threat_model", ""),
                "dataset": dataset, "model": model, "defenses": defenses}

    def _run(self, cid: str, cfg: dict, row: dict) -> dict:
        """One full in-process ``fit`` of ``cfg`` as cell ``cid``; its summary added to ``row``."""
        from leakage.attacks.gradient_inversion import GradientInversion
        from leakage.data.datamodule import VictimDataModule
        from leakage.fit import TRAINER_DEFAULTS, LeakageCLI

        self._fresh_run_dir(cid)
        cfg_path, private = self._fit_config(cid, cfg)
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
        except cell_errors() as err:
            return {**row, "status": "failed", "error": cell_error(err)}
        finally:
            if private is not None:
                private.cleanup()
        return self._summary(row, report, cli.datamodule.data_name, cli.model.hparams.model,
                             report.defenses_of(cli.trainer), elapsed)

    def _run_group(self, group: list[_Pending], specs: list[dict]) -> list[dict]:
        """The cells of ``group`` (defense cells that differ only in their defense, ``specs``) as one
        ``fit``; each cell's summary. If that fit fails, the cells run one by one."""
        from leakage.attacks.gradient_inversion import GradientInversion
        from leakage.data.datamodule import VictimDataModule
        from leakage.fit import TRAINER_DEFAULTS
        from leakage.reporting.loggers import TensorBoardLogger
        from leakage.sweep.batching import GroupCLI, GroupError, Member, Sharded, write_config

        members = []
        for p, spec in zip(group, specs):
            self._fresh_run_dir(p.cid)
            if self.writer:
                self._fit_config(p.cid, p.cfg)  # each cell's own fit config, as a record
            members.append(Member(p.cid, spec, defense_class(spec["class_path"])(**spec["init_args"]),
                                  TensorBoardLogger(save_dir=str(self.out), name="runs", version=p.cid)))
        shared = json.loads(json.dumps(group[0].cfg))
        shared["trainer"]["callbacks"] = shared["trainer"]["callbacks"][:-1]  # the cell's own defense
        cfg_path, private = self._fit_config(group[0].cid, shared)  # replaced by the cell's record below
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                start = time.perf_counter()
                cli = GroupCLI(members, GradientInversion, VictimDataModule, trainer_defaults=TRAINER_DEFAULTS,
                               save_config_callback=None,
                               parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False}},
                               args=["fit", "--config", str(cfg_path), *self.overrides])
                elapsed = time.perf_counter() - start
        except (*cell_errors(), GroupError) as err:
            if isinstance(err, Sharded):  # said once: later cells are not grouped
                if self.writer:
                    print("leakage sweep: on several processes the cells run one by one, each a fit sharded over "
                          "the processes (batching is for one process)", file=sys.stderr)
                self._sharded = True
            elif self.writer:
                print(f"leakage sweep: the batched fit of cells {', '.join(p.cid for p in group)} failed "
                      f"({cell_error(err)}); running them one by one", file=sys.stderr)
            return [self._run(p.cid, p.cfg, p.row) for p in group]
        finally:
            if private is not None:
                private.cleanup()
            if self.writer:
                self._fit_config(group[0].cid, group[0].cfg)
        rows = []
        ran = [m for m in members if m.error is None]
        for p, m in zip(group, members):
            if m.error is not None:
                rows.append({**p.row, "status": "failed", "error": cell_error(m.error)})
                continue
            write_config(confined(self.out, "runs", p.cid), cli.cell_config(m))
            row = self._summary(p.row, m.report, cli.datamodule.data_name, cli.model.hparams.model,
                                m.report.defenses_of(m.trainer), elapsed / len(ran))
            rows.append({**row, "group_time_s": elapsed, "group_cells": [q.cid for q in ran]})
        return rows

    # ---------------------------------------------------------------- search
    def holds(self, row: dict) -> bool:
        return row.get("status") == "ok" and row["success_rate"] <= float(self.cfg["target_success"])

    def breaking_point(self, defense: dict) -> dict:
        """Weakest setting that holds, refined by bisection between the last leaking and first holding value."""
        return breaking_point(defense, self.result, self.holds, int(self.cfg["refine"]))

    def run(self) -> list[dict]:
        """Every defense's breaking point (returned), then every study's grid; the output folder is
        locked for this sweep meanwhile."""
        with SweepLock(self.out) if self.writer else contextlib.nullcontext():
            if self.cfg["batch"]:  # every defense's grid in one fit, then one fit per bisection round
                points = breaking_points(self.defenses, self.results, self.holds, int(self.cfg["refine"]))
            else:
                points = [self.breaking_point(d) for d in self.defenses]
            if self.defenses and self.writer:
                self._write("breaking_points.json", lambda: atomic_write(confined(self.out, "breaking_points.json"),
                                                                         json_text(points, indent=2)))
            for s in self.studies:
                for v in s["values"]:
                    self.study_result(s, v)
            if self.writer:
                self.write_tables(points)
        return points

    # ---------------------------------------------------------------- output
    def rows(self) -> list[dict]:
        """The cell files computed with this sweep's configuration (cells left in the folder by
        another configuration, and files that are not a cell of their own name, are not shown)."""
        out = []
        for f in sorted(confined(self.out, "cells").glob("*.json")):
            try:
                row = _numbers(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue
            if isinstance(row, dict) and row.get("cell") == f.name[:-len(".json")] and self.current(row):
                out.append(row)
        on_disk = {r["cell"] for r in out}
        return out + [r for cid, r in sorted(self._unsaved.items()) if cid not in on_disk and self.current(r)]

    def _write(self, what: str, write: Callable[[], Any]) -> bool:
        """Run ``write``; a write failure (a full disk) is kept in :attr:`unwritten`, not raised."""
        try:
            write()
            return True
        except OSError as err:
            self.unwritten.setdefault(what, err.strerror or str(err))
            return False

    def write_tables(self, points: list[dict] | None = None) -> str:
        """Rebuild the tables, plots and hparams view from the cell files; return the markdown table."""
        rows = self.rows()
        table, markdown = results_tables(self.cfg, self.defenses, self.studies, rows, points)
        # every table says first which threat model produced its numbers
        self.table = f"Threat model: {threat_model(self.base, self.studies)}.\n\n{markdown}"
        self._write("results.csv", lambda: atomic_write(confined(self.out, "results.csv"), table))
        self._write("results.md", lambda: atomic_write(confined(self.out, "results.md"), self.table))
        self._write("plots", lambda: write_plots(self.out, self.defenses, self.studies, rows, points or []))
        self._write("the hparams view", lambda: write_hparams(self.out, rows))
        self._write("report.html", lambda: write_report(self.out, self.cfg, self.base, self.defenses, self.studies,
                                                        rows, points, self.overrides))
        return self.table


#: a cell's numbers that its file holds as null when they are NaN (nothing to measure): read back as NaN
_NUMBER_KEYS = ("score", "label_acc", "success_rate", "image_success_rate", "time_s", "entries_per_unknown",
                "ssim", "psnr", "mse", "accuracy", "accuracy_categorical", "accuracy_continuous")


def _numbers(row: Any) -> Any:
    """A cell's row as read from its (strict JSON) file: its metrics' nulls back to NaN."""
    if not isinstance(row, dict):
        return row
    return {k: (float("nan") if v is None and k in _NUMBER_KEYS else v) for k, v in row.items()}
