"""Batch label restoration (multisets, repeated labels; iLRG on batches of 64, FedAvg updates) and a batch
attack that recovers B = 2."""

from __future__ import annotations

import csv

import pytest
import torch

import leakage
from leakage.attacks.settings import Dummies
from leakage.cli import main
from leakage.data.datamodule import VictimDataModule
from leakage.attacks.labels import restore_batch_labels
from leakage.engine.metrics import match_batch, reconstruction_metrics
from leakage.engine.models import build_model

from conftest import CONFIGS, bundled_labels, cli_args, quiet_trainer, run_dirs
from leakage.data.sources import Bundled


def _batch(dataset, labels_wanted):
    """Bundled images whose labels are exactly `labels_wanted` (repeats allowed, distinct images)."""
    labels = bundled_labels(dataset)
    used, idx = set(), []
    for want in labels_wanted:
        i = next(i for i, l in enumerate(labels) if l == want and i not in used)
        used.add(i)
        idx.append(i)
    return idx


@pytest.mark.parametrize("dataset, wanted", [
    ("cifar10", [8, 8, 8, 6]),          # three of one class
    ("cifar10", [6, 6, 6, 6]),          # all the same
    ("mnist", [1, 1, 9, 9, 9, 0, 4, 4]),
    ("mnist", [7, 2, 1, 0, 4, 9, 5, 6]),
])
@pytest.mark.parametrize("strategy", ["bias_count", "weight_count"])
def test_count_strategies_recover_label_multisets_with_repeats(dataset, wanted, strategy):
    dm = VictimDataModule(Bundled(dataset), indices=_batch(dataset, wanted), batch_size=len(wanted))
    model = build_model("lenet", dm.input_shape, 10)
    obs = dm.prepare(model)
    rec = restore_batch_labels(model, obs.gradients, len(wanted), dm.input_shape, strategy)
    assert rec.tolist() == [sorted(wanted)]


def test_counts_always_sum_to_the_batch_size():
    dm = VictimDataModule(Bundled("cifar10"), num_victims=5, batch_size=4)
    model = build_model("lenet", dm.input_shape, 10)
    grads = dm.prepare(model).gradients
    noisy = {k: v + 0.05 * torch.randn_like(v) for k, v in grads.items()}  # estimates far from integers
    rec = restore_batch_labels(model, noisy, 4, dm.input_shape, "bias_count")
    assert rec.shape == (5, 4) and ((rec >= 0) & (rec < 10)).all()


@pytest.mark.parametrize("strategy", ["bias_count", "ilrg"])
def test_a_shortfall_of_more_labels_than_classes_is_completed_and_said(strategy):
    """A defended update's counts can account for far fewer than B labels (here the bias gradient shifted by
    +0.5: none): the B labels are still given, never fewer, and a note says they are a guess."""
    dm = VictimDataModule(Bundled("mnist"), num_victims=2, batch_size=64)
    model = build_model("lenet", dm.input_shape, 10)
    grads = dict(dm.prepare(model).gradients)
    grads["fc.bias"] = grads["fc.bias"] + 0.5
    notes: list[str] = []
    rec = restore_batch_labels(model, grads, 64, dm.input_shape, strategy, notes=notes)
    assert rec.shape == (2, 64) and ((rec >= 0) & (rec < 10)).all()
    note, = notes
    assert note.startswith(f"label strategy {strategy!r}: the update's class counts account for ")
    assert "of the batch's 64 labels" in note and "to 64 by largest remainders, a guess" in note
    clean: list[str] = []
    restore_batch_labels(model, dm.prepare(model).gradients, 64, dm.input_shape, strategy, notes=clean)
    assert clean == []


def test_an_attack_on_an_update_whose_counts_fall_short_runs_and_its_report_says_so(tmp_path, capsys):
    """The optimisation attack with bias_count on such an update: a result and the note, not a shape error."""
    model = build_model("lenet", (1, 28, 28), 10)
    x, y = leakage.bundled_images("mnist", range(16))
    update = leakage.client_update(model, x, y)
    update["fc.bias"] = update["fc.bias"] + 0.5
    result = leakage.invert(model, update, (1, 28, 28), 10, attack="dlg", batch_size=16, steps=1, labels="bias_count")
    assert result.labels.shape == (1, 16)
    assert any("completed to 16 by largest remainders" in n for n in result.module.notes)


def test_yin_picks_distinct_labels():
    wanted = [3, 8, 0, 6]
    dm = VictimDataModule(Bundled("cifar10"), indices=_batch("cifar10", wanted), batch_size=4)
    model = build_model("lenet", dm.input_shape, 10)
    rec = restore_batch_labels(model, dm.prepare(model).gradients, 4, dm.input_shape, "yin")
    assert rec.shape == (1, 4) and len(set(rec[0].tolist())) == 4


def test_restoration_errors():
    model = build_model("lenet", (3, 32, 32), 10)
    grads = {k: torch.zeros(1, *p.shape) for k, p in model.named_parameters()}
    with pytest.raises(ValueError, match="unknown label restoration strategy"):
        restore_batch_labels(model, grads, 2, (3, 32, 32), "oracle")
    with pytest.raises(ValueError, match="distinct labels"):
        restore_batch_labels(model, grads, 11, (3, 32, 32), "yin")
    nobias = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10, bias=False))
    g = {"1.weight": torch.zeros(1, 10, 3 * 32 * 32)}
    with pytest.raises(ValueError, match="weight_count"):
        restore_batch_labels(nobias, g, 2, (3, 32, 32), "bias_count")
    assert restore_batch_labels(nobias, g, 2, (3, 32, 32), "weight_count").shape == (1, 2)


def test_assignment_recovers_a_permuted_batch():
    dm = VictimDataModule(Bundled("cifar10"), num_victims=1, batch_size=6)
    truth = dm.load_victims().images[0]
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    noisy = (truth[perm] + 0.03 * torch.randn_like(truth)).clamp(0, 1)
    found = match_batch(noisy, truth)
    assert torch.equal(noisy[found], noisy[torch.argsort(perm)])
    assert float(reconstruction_metrics(noisy[None], truth[None])["ssim"][0]) > 0.8


def test_batch_attack_recovers_two_images_with_restored_labels(tmp_path):
    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.reporting.callbacks import LeakageReport

    dm = VictimDataModule(Bundled("mnist"), indices=[0, 1], batch_size=2)
    module = GradientInversion(model="mlp", input_shape=dm.input_shape, labels="bias_count", dummies=Dummies(init="uniform"))
    report = LeakageReport(save_artifacts=False)
    quiet_trainer(40, [report], root=tmp_path).fit(module, datamodule=dm)
    (row,) = report.rows
    assert sorted(row["recovered_labels"]) == sorted(row["true_labels"]) == [2, 7]
    assert row["ssim"] > 0.95, row  # both images, after the optimal assignment
    assert len(row["ssim_images"]) == 2 and min(row["ssim_images"]) > 0.9


def test_entries_per_unknown_input_value():
    # LeNet with 10 classes on CIFAR-10 has 15,826 gradient entries; a batch of 8 has 24,576 unknowns
    model = build_model("lenet", (3, 32, 32), 10)
    assert sum(p.numel() for p in model.parameters()) == 15826
    obs = VictimDataModule(Bundled("cifar10"), num_victims=1, batch_size=8).prepare(model)
    assert obs.entries_per_unknown == pytest.approx(15826 / 24576)
    obs1 = VictimDataModule(Bundled("cifar10"), num_victims=1).prepare(model)
    assert obs1.entries_per_unknown == pytest.approx(15826 / 3072)


def test_ilrg_restores_every_label_of_batches_of_64_mnist_images():
    # untrained LeNet (DLG's init): iLRG's class-average embeddings dW_c / db_c are the classes' own
    dm = VictimDataModule(Bundled("mnist"), num_victims=2, batch_size=64)
    model = build_model("lenet", dm.input_shape, 10)
    rec = restore_batch_labels(model, dm.prepare(model).gradients, 64, dm.input_shape, "ilrg")
    assert torch.equal(rec, dm.load_victims().labels.sort(dim=1).values)


def test_ilrg_labels_through_the_cli_with_the_analytic_attack(tmp_path):
    main(cli_args(tmp_path, "--config", str(CONFIGS / "mnist_analytic.yaml"), "--model.labels", "ilrg",
                  "--data.num_victims", "2", "--data.batch_size", "16"))
    run, = run_dirs(tmp_path)
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(float(r["label_acc"]) == 1.0 for r in rows), rows


def test_ilrg_refuses_a_model_without_a_biased_last_linear_layer_in_one_line():
    nobias = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10, bias=False))
    g = {"1.weight": torch.zeros(1, 10, 3 * 32 * 32)}
    with pytest.raises(ValueError, match="^strategy 'ilrg' needs a last nn.Linear layer with a bias; use 'weight_count'$"):
        restore_batch_labels(nobias, g, 2, (3, 32, 32), "ilrg")
    scaled = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10), torch.nn.Softmax(dim=1))
    g = {"1.weight": torch.zeros(1, 10, 3 * 32 * 32), "1.bias": torch.zeros(1, 10)}
    with pytest.raises(ValueError, match="the output of '1' is not what the model returns"):
        restore_batch_labels(scaled, g, 2, (3, 32, 32), "ilrg")


def test_a_fedavg_update_of_several_local_steps_is_read_as_the_mean_of_its_local_gradients():
    x, y = leakage.bundled_images("mnist", list(range(16)))
    model = build_model("mlp", (1, 28, 28), 10)
    fedavg = leakage.FedAvgClient(local_steps=4, local_lr=1e-4, local_batch_size=4)  # 4 mini-batches cover the batch
    update = leakage.client_update(model, x, y, fedavg=fedavg)
    result = leakage.invert(model, update, input_shape=(1, 28, 28), num_classes=10, attack="analytic", fedavg=fedavg,
                            batch_size=16, labels="ilrg")
    assert result.labels[0].tolist() == sorted(y.tolist())
    pseudo_gradient = {k: v[None] / -fedavg.local_lr for k, v in update.items()}  # the sum of the 4 local gradients
    assert restore_batch_labels(model, pseudo_gradient, 16, (1, 28, 28), "ilrg")[0].tolist() != sorted(y.tolist())
