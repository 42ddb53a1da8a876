"""Every failure is reported, never crashed on; artifacts never land in the current folder by surprise."""

from __future__ import annotations

import csv
import json

import pytest

from leakage.attacks.settings import Dummies
from leakage.cli import main
from leakage.federated.client import client_gradients, save_gradients
from leakage.data.datamodule import VictimDataModule
from leakage.engine.models import build_model

from conftest import CONFIGS, cli_args, run_dirs
from leakage.data.sources import Bundled

FAST = ["--config", str(CONFIGS / "cifar_fast.yaml"), "--data.source.dataset", "mnist", "--trainer.max_steps", "3",
        "--model.optimizer.max_iter", "3"]


def _fit_ok(capsys, args) -> str:
    """Run ``leakage fit`` in-process; it must return normally (exit status 0)."""
    capsys.readouterr()
    main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "leakage: error" not in err
    return out


def _rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("sigma", ["1e30", "1e38"])
def test_every_problem_non_finite_reports_every_victim_failed(capsys, tmp_path, sigma):
    """Noise so large that the matching loss overflows for every problem: a finished run, all failed."""
    out = _fit_ok(capsys, cli_args(tmp_path, *FAST, "--data.num_victims", "2",
                                   "--trainer.callbacks+=leakage.federated.defenses.GaussianNoise",
                                   "--trainer.callbacks.sigma", sigma))
    (run,) = run_dirs(tmp_path)
    rows = _rows(run)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    for name in ("metrics.json", "metrics.txt", "gallery.png", "history.png", "config.yaml"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["failed"] == 2 and summary["success"] == 0
    assert "2 of 2 victims failed numerically" in out and "failed 2" in out


def test_a_captured_update_scaled_by_1e30_fails_without_crashing(capsys, tmp_path):
    model = build_model("lenet", (1, 28, 28), 10)
    dm = VictimDataModule(Bundled("mnist"), indices=[0])
    secret = dm.load_victims()
    grads = {k: v * 1e30 for k, v in client_gradients(model, secret.images, secret.labels).items()}
    path = tmp_path / "huge.safetensors"
    save_gradients(grads, path)
    out = _fit_ok(capsys, cli_args(tmp_path / "logs", *FAST, "--data.source", "CapturedGradients", "--data.num_victims", "1",
                                   "--data.source.gradient_file", str(path)))
    (run,) = run_dirs(tmp_path / "logs")
    assert [r["status"] for r in _rows(run)] == ["failed"]
    assert "1 of 1 victims failed numerically" in out


def test_a_run_that_fails_early_stops_early(tmp_path):
    """Nothing is left to attack once every problem failed: the run ends instead of idling to max_steps."""
    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.reporting.callbacks import LeakageReport
    from leakage.federated.defenses import GaussianNoise

    from conftest import quiet_trainer

    dm = VictimDataModule(Bundled("mnist"), indices=[0])
    module = GradientInversion(model="lenet", input_shape=(1, 28, 28), labels="idlg", dummies=Dummies(init="uniform"))
    trainer = quiet_trainer(50, [GaussianNoise(1e30), LeakageReport(save_artifacts=False)], root=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert bool(module.failed.all())
    assert trainer.global_step < 50


def test_without_a_logger_artifacts_go_to_a_fresh_run_folder(capsys, tmp_path, monkeypatch):
    """``--trainer.logger false`` must not write into the current folder, where the user's own
    config.yaml (the one passed to --config) would be overwritten."""
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "config.yaml"
    mine.write_text((CONFIGS / "cifar_fast.yaml").read_text())
    before = mine.read_text()
    for _ in range(2):
        out = _fit_ok(capsys, ["fit", "--config", "config.yaml", "--data.source.dataset", "mnist", "--trainer.max_steps", "1",
                               "--model.optimizer.max_iter", "2", "--trainer.logger", "false",
                               "--trainer.enable_progress_bar", "false"])
    assert mine.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "logs"]
    runs = sorted((tmp_path / "logs" / "leakage").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]  # a second run never overwrites the first
    for run in runs:
        for name in ("config.yaml", "metrics.csv", "metrics.json", "gallery.png", "history.png"):
            assert (run / name).is_file(), (run, name)
    assert "run folder: logs/leakage/version_1" in out
