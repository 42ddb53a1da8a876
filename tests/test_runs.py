"""A run's folder: claimed atomically, marked while running, kept when interrupted, and its files
written whole or said to be missing."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import leakage.reporting.runfiles
from leakage.cli import main

from conftest import REPO, cli_args, cli_error, run_dirs

TINY = ["--data.source.dataset", "mnist", "--data.num_victims", "1", "--trainer.max_steps", "2", "--model.optimizer.max_iter", "2"]

#: a ``leakage fit`` that waits, just before its logger picks its version, until the other run has
#: got there too: both then look for a free ``version_N`` at the same moment
_TOGETHER = r"""
import pathlib, sys, time
from leakage.reporting.loggers import TensorBoardLogger
original = TensorBoardLogger.version.fget
def version(self):
    if self._version is None:
        pathlib.Path(sys.argv[1]).touch()
        deadline = time.time() + 60
        while not pathlib.Path(sys.argv[2]).exists() and time.time() < deadline:
            time.sleep(0.001)
    return original(self)
TensorBoardLogger.version = property(version)
from leakage.cli import main
main(sys.argv[3:])
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _fit(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "leakage.cli", *cli_args(tmp_path / "logs", *TINY, *extra)]


def test_two_runs_started_together_keep_their_own_folders(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", _TOGETHER, str(tmp_path / f"at_{i}"), str(tmp_path / f"at_{1 - i}"),
                               *cli_args(tmp_path / "logs", *TINY)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
             for i in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    folders = [next(ln for ln in out.splitlines() if ln.startswith("run folder:")) for out, _ in outs]
    assert len(set(folders)) == 2, folders
    runs = run_dirs(tmp_path / "logs")
    assert [r.name for r in runs] == ["version_0", "version_1"]
    for run in runs:  # each folder holds one run: its own table and its own event file
        assert len(list(csv.DictReader(open(run / "metrics.csv")))) == 1
        assert len(list(run.glob("events.out.tfevents.*"))) == 1
        assert json.loads((run / "metrics.json").read_text())["status"] == "complete"
        assert not (run / leakage.reporting.runfiles.RUNNING).exists()


def _started(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    """A long ``leakage fit`` in a subprocess, once its attack runs (its folder is marked RUNNING)."""
    proc = subprocess.Popen(_fit(tmp_path, "--trainer.max_steps", "100000", *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "logs").glob(f"*/version_*/{leakage.reporting.runfiles.RUNNING}")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    (run,) = run_dirs(tmp_path / "logs")
    time.sleep(1.0)  # a few attack steps
    return proc, run


def test_a_fit_interrupted_by_sigint_keeps_its_table_marked_partial(tmp_path):
    proc, run = _started(tmp_path)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert "leakage: interrupted: stopping at the end of this attack step" in err  # never in the middle of one
    assert "partial run: interrupted (SIGINT) at step" in out and "victim  indices" in out
    result = json.loads((run / "metrics.json").read_text())
    assert result["status"] == "partial" and result["reason"].startswith("interrupted (SIGINT) at step")
    assert result["step"] >= 1 and len(result["victims"]) == 1
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) == 1
    first, second = (run / "metrics.txt").read_text().splitlines()[:2]
    assert first == "threat model: honest-but-curious server" and second.startswith("partial run: interrupted")
    assert (run / "gallery.png").stat().st_size > 0
    assert not (run / leakage.reporting.runfiles.RUNNING).exists()


def test_a_killed_fit_leaves_its_running_marker_and_no_result(tmp_path):
    proc, run = _started(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    marker = (run / leakage.reporting.runfiles.RUNNING).read_text()
    assert f"pid {proc.pid} " in marker
    assert not (run / "metrics.json").exists() and not (run / "metrics.csv").exists()


def test_a_fit_that_fails_midway_is_marked_partial(tmp_path, capsys, monkeypatch):
    from leakage.attacks.gradient_inversion import GradientInversion

    original = GradientInversion.on_train_batch_end

    def failing(self, outputs, batch, batch_idx):
        original(self, outputs, batch, batch_idx)
        if self.trainer.global_step >= 2:
            raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(GradientInversion, "on_train_batch_end", failing)
    with pytest.raises(RuntimeError):
        main(cli_args(tmp_path, *TINY, "--trainer.max_steps", "5", "--trainer.enable_progress_bar", "false"))
    (run,) = run_dirs(tmp_path)
    result = json.loads((run / "metrics.json").read_text())
    assert result["status"] == "partial" and "out of memory (simulated)" in result["reason"]
    assert result["step"] >= 2 and not (run / leakage.reporting.runfiles.RUNNING).exists()


# ------------------------------------------------------------------------------- write failures
def test_run_folders_through_a_file_are_refused_before_the_attack(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    base = ["fit", *TINY, "--trainer.enable_progress_bar", "false"]
    line = cli_error(capsys, [*base, "--trainer.logger.init_args.save_dir", str(tmp_path / "a_file")])
    assert "a_file is a file" in line and "save_dir" in line
    line = cli_error(capsys, [*base, "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
                              "--trainer.default_root_dir", str(tmp_path / "a_file" / "sub")])
    assert "a_file is a file" in line and "default_root_dir" in line
    line = cli_error(capsys, [*base, "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "a_file")])
    assert "a_file is a file" in line
    assert "victim" not in capsys.readouterr().out  # no attack ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_read_only_run_folder_is_refused_before_the_attack(tmp_path, capsys, monkeypatch):
    """Tests run as root, for whom a folder's mode bits never refuse a write: the read-only file
    system is simulated where the check meets it, at its test file (``os.open`` failing with EROFS,
    as it does on a read-only mount)."""
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_open = os.open

    def erofs(path, *args, **kwargs):
        if Path(path).parent == readonly:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(leakage.reporting.runfiles.os, "open", erofs)
    line = cli_error(capsys, ["fit", *TINY, "--trainer.logger.init_args.save_dir", str(readonly / "logs")])
    assert "Read-only file system" in line and str(readonly) in line
    assert "victim" not in capsys.readouterr().out
    assert list(readonly.iterdir()) == []


def _disk_full_after(tmp_path: Path, monkeypatch) -> None:
    """From now on every artifact under ``tmp_path`` meets a full disk half-way through its bytes."""
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Full(f) if "w" in mode and Path(path).is_relative_to(tmp_path) else f

    monkeypatch.setattr(leakage.reporting.runfiles, "open", full, raising=False)


def test_a_full_disk_after_the_attack_prints_the_table_and_names_what_was_not_written(tmp_path, capsys, monkeypatch):
    from leakage.reporting import callbacks

    original = callbacks.write_run_files

    def at_the_end(*args, **kwargs):
        _disk_full_after(tmp_path, monkeypatch)
        return original(*args, **kwargs)

    monkeypatch.setattr(callbacks, "write_run_files", at_the_end)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(cli_args(tmp_path, *TINY))
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    assert "victim  indices" in out and "reconstructed (SSIM >= 0.9)" in out
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("leakage: error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0]
    for name in ("metrics.csv", "metrics.json", "gallery.png", "report.html"):
        assert name in lines[0]
    (run,) = run_dirs(tmp_path)
    # nothing truncated is left: no half-written gallery.png, no temporary files
    assert not (run / "gallery.png").exists() and not list(run.glob(".*.tmp"))
    assert not (run / "metrics.json").exists() and (run / leakage.reporting.runfiles.RUNNING).exists()


# ------------------------------------------------------------------------------- budgets that run nothing
@pytest.mark.parametrize("setting", [["--trainer.max_epochs", "0"], ["--trainer.limit_train_batches", "0"],
                                     ["--trainer.limit_train_batches", "0.0"]])
def test_a_budget_that_runs_nothing_is_refused_before_a_run_folder(tmp_path, capsys, setting):
    line = cli_error(capsys, cli_args(tmp_path, *TINY, *setting))
    assert f"{setting[0]} 0 runs no attack step" in line
    assert not run_dirs(tmp_path) and not (tmp_path / "logs").exists()


def test_early_stopping_on_a_metric_the_attack_does_not_log_names_the_ones_it_does(tmp_path, capsys):
    line = cli_error(capsys, cli_args(tmp_path, *TINY, "--trainer.callbacks+=EarlyStopping",
                                      "--trainer.callbacks.monitor", "val_loss"))
    assert "EarlyStopping monitors 'val_loss', which the attack does not log; it logs: attack/loss" in line
    assert "victim" not in capsys.readouterr().out and not run_dirs(tmp_path)
