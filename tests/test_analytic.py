"""The closed-form family and the analytic first-layer inversion: exact on one record, through the CLI,
the Python API and the sweep, with the records an optimisation attack writes; refusals in one line."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import leakage
from leakage.attacks.analytic import AnalyticInversion
from leakage.records import COLUMNS
from leakage.cli import main
from leakage.data.datamodule import VictimDataModule
from leakage.federated.defenses import GaussianNoise, TopK
from leakage.data.kinds import TabularKind
from leakage.engine.metrics import reconstruction_metrics
from leakage.engine.models import build_model

from conftest import CONFIGS, fit_in_process, bundled_labels, cli_args, cli_error, run_dirs
from leakage.data.sources import BundledTable

SHAPE = (1, 28, 28)


def _mlp() -> nn.Module:
    return build_model("mlp", SHAPE, 10, seed=1234)



def test_the_cli_recovers_one_mnist_image_exactly_with_an_optimisation_attack_s_records(tmp_path):
    cli = fit_in_process(tmp_path, "mnist_analytic.yaml", "--data.indices", "[0]", "--report.log_every_n_steps", "1")
    assert isinstance(cli.model, AnalyticInversion)  # the config's `attack: analytic`
    secret = cli.datamodule.secret
    recon = cli.model.dummy_data.detach()
    assert (recon - secret.images).abs().max() <= 1e-4
    assert float(reconstruction_metrics(recon, secret.images)["ssim"][0]) >= 0.999
    assert cli.trainer.global_step == 1 and cli.model.solve_seconds < 1.0
    run, = run_dirs(tmp_path)
    with open(run / "metrics.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS  # the columns of every attack
    assert rows[0]["status"] == "ok" and float(rows[0]["ssim"]) >= 0.999
    assert int(rows[0]["recovered_labels"]) == int(rows[0]["true_labels"]) == bundled_labels("mnist")[0]
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["success"] == 1 and summary["exact"] == 1
    text = (run / "metrics.txt").read_text()
    assert text.splitlines()[:2] == ["threat model: honest-but-curious server",
                                     "attack: analytic first-layer inversion (closed form)"]
    assert "exact (every slot read off the update, and the recovered batch reproduces the whole observed update to relative residual <= 0.0001): 1/1 victims" in text
    assert yaml.safe_load((run / "config.yaml").read_text())["attack"] == "analytic"
    events = sorted(run.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[0]), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    # (PSNR is infinite at MSE 0 and, like any non-finite value, not logged)
    for tag in ("attack/median_loss", "victim_00/ssim", "victim_00/mse", "attack/ssim_mean",
                "attack/reconstructed", "final/ssim_mean", "final/victims", "final/reconstructed"):
        assert tag in acc.Tags()["scalars"], tag
    assert {"gallery", "history"} <= set(acc.Tags()["images"])


def test_the_python_api_recovers_one_image_exactly_from_the_update_alone():
    x, y = leakage.bundled_images("mnist", [3])
    model = _mlp()
    update = leakage.client_update(model, x, y)
    result = leakage.invert(model, update, input_shape=SHAPE, num_classes=10, attack="analytic")  # no x, no y
    assert isinstance(result.module, AnalyticInversion) and result.exact.tolist() == [True]
    assert (result.images[0] - x).abs().max() <= 1e-4
    assert result.labels.tolist() == [y.tolist()]
    report = leakage.report(result, x, y)
    assert report.rows[0]["ssim"] >= 0.999 and report.summary["label_acc"] == 1.0
    print(f"analytic attack solved in {1000 * result.module.solve_seconds:.1f} ms")


def test_the_cli_recovers_one_adult_record_exactly_through_the_tabular_kind(tmp_path):
    """configs/adult_analytic.yaml: one bundled Adult record on TabLeak's tabular_mlp; the encoded row
    itself is reconstructed (not relaxed), decoded and scored with TabLeak's accuracy."""
    cli = fit_in_process(tmp_path, "adult_analytic.yaml")
    assert isinstance(cli.model, AnalyticInversion) and isinstance(cli.model.kind, TabularKind)
    truth = cli.datamodule.secret.images
    assert truth.shape == (1, 1, cli.model.kind.schema.width)
    assert (cli.model.reconstruction() - truth).abs().max() <= 1e-4
    assert cli.trainer.global_step == 1 and cli.model.solve_seconds < 1.0
    run, = run_dirs(tmp_path)
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["accuracy_mean"] == 1.0 and summary["label_acc"] == 1.0 and summary["exact"] == 1
    assert "overall accuracy 100.0%  (categorical 100.0%, continuous 100.0%" in cli.stdout
    assert "exact (every slot read off the update, and the recovered batch reproduces the whole observed update to relative residual <= 0.0001): 1/1 victims" in cli.stdout
    assert (run / "schema.json").is_file()
    print(f"analytic attack on one Adult record solved in {1000 * cli.model.solve_seconds:.1f} ms")


def test_the_python_api_recovers_one_adult_record_exactly():
    dm = VictimDataModule(BundledTable(), indices=[7])
    kind = dm.table.kind
    model = build_model("tabular_mlp", dm.input_shape, dm.num_classes, seed=1234)
    truth, y = dm.table.encode([7])
    update = leakage.client_update(model, truth, y)
    result = leakage.invert(model, update, dm.input_shape, dm.num_classes, attack="analytic",
                            kind=TabularKind(kind.schema))
    assert result.exact.tolist() == [True] and result.labels.tolist() == [y.tolist()]
    assert (result.images[0] - truth).abs().max() <= 1e-4
    assert float(kind.evaluate(result.images, truth[None])["accuracy"][0]) == 1.0
    assert kind.schema.decode(result.images[0]) == kind.schema.decode(truth)
    assert result.module.solve_seconds < 1.0
    print(f"analytic attack on one Adult record (Python API) solved in {1000 * result.module.solve_seconds:.1f} ms")


class _BiasedMLP(nn.Module):
    """A user's model: a biased linear first layer on the flattened input, sigmoid, a classifier."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.fc1, self.fc2 = nn.Linear(784, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.sigmoid(self.fc1(self.scale * x.flatten(1))))


def test_a_user_model_and_a_fedavg_update_of_one_image_are_inverted_exactly():
    torch.manual_seed(0)
    x, y = leakage.bundled_images("mnist", [5])
    model = _BiasedMLP()
    fedavg = leakage.FedAvgClient(local_steps=3, local_lr=0.1)
    update = leakage.client_update(model, x, y, fedavg=fedavg)  # every local step sees the same image
    result = leakage.invert(model, update, input_shape=SHAPE, num_classes=10, attack="analytic", fedavg=fedavg)
    assert result.exact.tolist() == [True] and (result.images[0] - x).abs().max() <= 1e-4
    assert result.labels.tolist() == [y.tolist()]


def test_a_batch_gives_a_mixture_reported_not_exact():
    x, y = leakage.bundled_images("mnist", [0, 1])
    model = _mlp()
    update = leakage.client_update(model, x, y)
    result = leakage.invert(model, update, input_shape=SHAPE, num_classes=10, attack="analytic", batch_size=2,
                            labels="bias_count")
    assert result.exact.tolist() == [False] and not result.failed.any()
    assert torch.equal(result.images[0, 0], result.images[0, 1])  # one mixture in every slot
    assert leakage.report(result, x[None], y[None]).rows[0]["ssim"] < 0.9


# top-k at 0.01: the mlp's update of one MNIST digit is already sparse (dead ReLU rows, black pixels: about
# 10% of its entries are non-zero), so top-k at 0.1 removes nothing and the inversion stays exact
@pytest.mark.parametrize("defense", [GaussianNoise(sigma=1e-3), TopK(keep_ratio=0.01)], ids=["noise", "topk"])
def test_defenses_degrade_it_and_it_is_no_longer_reported_exact(defense):
    x, y = leakage.bundled_images("mnist", [0])
    model = _mlp()
    clean = leakage.invert(model, leakage.client_update(model, x, y), input_shape=SHAPE, num_classes=10,
                           attack="analytic")
    defended = leakage.invert(model, leakage.client_update(model, x, y, defenses=[defense]), input_shape=SHAPE,
                              num_classes=10, attack="analytic")
    assert not defended.failed.any() and defended.exact.tolist() == [False]
    err_clean, err = ((r.images[0] - x).abs().max() for r in (clean, defended))
    assert err_clean <= 1e-4 < err


def test_a_model_whose_first_layer_is_not_linear_with_a_bias_is_refused_in_one_line(capsys, tmp_path):
    line = cli_error(capsys, cli_args(tmp_path, "--config", str(CONFIGS / "mnist_analytic.yaml"),
                                      "--model.model", "lenet"))
    assert "'body.0' (Conv2d)" in line and "not an nn.Linear" in line
    assert not run_dirs(tmp_path)
    lenet = build_model("lenet", SHAPE, 10)
    with pytest.raises(ValueError, match=r"'body.0' \(Conv2d\)"):
        leakage.invert(lenet, leakage.client_update(lenet, *leakage.bundled_images("mnist", [0])),
                       input_shape=SHAPE, num_classes=10, attack="analytic")
    no_bias = _BiasedMLP()
    no_bias.fc1 = nn.Linear(784, 64, bias=False)
    with pytest.raises(ValueError, match="'fc1' .* has no bias"):
        AnalyticInversion(model=no_bias, input_shape=SHAPE)
    with pytest.raises(ValueError, match="'fc1' .* gets something else"):
        AnalyticInversion(model=_BiasedMLP(scale=2.0), input_shape=SHAPE)  # not fed the input itself


def test_an_attack_slot_naming_a_class_outside_the_package_is_refused_without_importing_it(capsys, tmp_path,
                                                                                          monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_attack_pkg.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport leakage\nclass Attack(leakage.GradientInversion): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "evil.yaml"
    config.write_text("attack: evil_attack_pkg.Attack\n")
    for args in (["--config", str(config)], ["--attack", "evil_attack_pkg.Attack"]):
        line = cli_error(capsys, cli_args(tmp_path, *args))
        assert "unknown attack 'evil_attack_pkg.Attack'" in line and "analytic" in line
    assert not marker.exists() and "evil_attack_pkg" not in sys.modules
    with pytest.raises(ValueError, match="unknown attack"):
        leakage.invert(_mlp(), {}, input_shape=SHAPE, num_classes=10, attack="evil_attack_pkg.Attack")


def test_a_defense_sweep_runs_the_analytic_attack_in_its_batched_cells(tmp_path):
    cfg = yaml.safe_load((CONFIGS / "mnist_analytic.yaml").read_text())
    cfg["data"]["num_victims"] = 2
    cfg["trainer"]["logger"] = False
    cfg["sweep"] = {"output": str(tmp_path / "sweep"), "refine": 0, "success_ssim": 0.9, "defenses": [
        {"name": "noise", "class_path": "GaussianNoise", "param": "sigma", "values": [0.0, 1.0]}]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with contextlib.redirect_stdout(io.StringIO()):
        main(["sweep", "--config", str(path)])
    cells = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "sweep" / "cells").glob("*.json")}
    assert len(cells) == 2 and all(c["status"] == "ok" for c in cells.values()), cells
    clean, noisy = sorted(cells.values(), key=lambda c: c["value"])
    assert clean["success"] == 2 and clean["ssim"] >= 0.999 and clean["model"] == "mlp"
    assert noisy["ssim"] < 0.9
    assert len({c["fingerprint"] for c in cells.values()}) == 2
