"""Exact only where proven (leakage.attacks.closedform): a closed-form attack reports a victim exact only when every
slot was read off the update and the recovered batch, its labels paired to the slots, reproduces the WHOLE
observed update to CERTIFIED_RESIDUAL. Defended updates (noise, top-k, clipping, masked secure aggregation)
fill every bin or row yet are never certified; clean ones whose batch comes back are."""

from __future__ import annotations

import pytest
import torch

import leakage
from leakage.federated.defenses import GaussianNoise, NormClip, TopK
from leakage.attacks.closedform import CERTIFIED_RESIDUAL
from leakage.engine.models import build_model

from conftest import fit_in_process
from leakage.data.sources import BundledTable

SHAPE = (1, 28, 28)


def _imprint_update(batch: int, bins: int, defenses=()):
    server = leakage.ImprintServer(num_bins=bins, feature_mean=0.1239, feature_std=0.0407)  # MNIST brightness
    sent = server.send(build_model("lenet", SHAPE, 10, seed=1234), SHAPE)
    x, y = leakage.bundled_images("mnist", range(batch))
    return server, sent, x, y, leakage.client_update(sent, x, y, defenses=defenses)


def result_possible(server, sent, update) -> bool:
    """Whether every one of the imprint's bins holds something (the old certificate's whole test)."""
    db = update[f"{server.layer}.bias"]
    size = (db - torch.cat([db[1:], torch.zeros(1)])).abs()
    return bool((size > 1e-5 * size.max()).all())


def _invert(server, sent, update, batch, attack="imprint"):
    return leakage.invert(sent, update, input_shape=SHAPE, num_classes=10, batch_size=batch, attack=attack,
                          server=server)


def test_a_clean_imprint_update_is_certified_with_its_labels_paired_to_the_slots():
    server, sent, x, y, update = _imprint_update(16, 256)
    result = _invert(server, sent, update, 16)
    assert result.exact.tolist() == [True]
    assert float(result.module.relative_residual[0]) <= 1e-6  # measured 3.1e-7
    # each slot holds one image to float32 rounding, and its label is that image's, not a sorted multiset
    distance = torch.cdist(result.images[0].flatten(1), x.flatten(1))
    slot_of = distance.argmin(dim=0)
    assert (distance.min(dim=0).values <= 1e-3 * x.flatten(1).norm(dim=1)).all()
    assert result.labels[0, slot_of].tolist() == y.tolist()


@pytest.mark.parametrize("defense", [GaussianNoise(0.1), GaussianNoise(1e-6), TopK(0.3)],
                         ids=["noise 0.1", "noise 1e-6", "top-k 0.3"])
def test_a_noisy_or_sparsified_imprint_update_is_never_certified(defense):
    """16 bins for 16 images: noise fills every bin, which a count of non-empty bins took for one image per
    bin (the certificate before: "exact" with no image back)."""
    server, sent, x, y, update = _imprint_update(16, 16, [defense])
    if isinstance(defense, GaussianNoise):
        assert result_possible(server, sent, update)
    result = _invert(server, sent, update, 16)
    assert result.exact.tolist() == [False]
    assert float(result.module.relative_residual[0]) > 10 * CERTIFIED_RESIDUAL  # measured >= 3.4e-2


def test_a_clipped_update_is_not_certified_even_when_every_image_comes_back():
    server, sent, x, y, clean = _imprint_update(16, 256)
    norm = float(sum(v.double().pow(2).sum() for v in clean.values()).sqrt())
    _, _, _, _, update = _imprint_update(16, 256, [NormClip(0.999 * norm)])
    result = _invert(server, sent, update, 16)
    distance = torch.cdist(result.images[0].flatten(1), x.flatten(1)).min(dim=0).values
    assert (distance <= 1e-3 * x.flatten(1).norm(dim=1)).all()  # the inputs are right (a ratio ignores scale)
    assert result.exact.tolist() == [False]  # but the update is not the client's: 1e-3 off with paired labels
    assert float(result.module.relative_residual[0]) > CERTIFIED_RESIDUAL


def test_filler_slots_are_never_certified_though_they_reproduce_the_update():
    """Trap weights of scale 0.5 on 4 images: units fire for one image only, the other three leave the same
    update whatever they are, so the filler reproduces the update (3e-8) and is still not exact."""
    server = leakage.TrapWeightServer(trap_scale=0.5)
    sent = server.send(build_model("mlp", SHAPE, 10, seed=1234), SHAPE)
    x, y = leakage.bundled_images("mnist", range(4))
    result = _invert(server, sent, leakage.client_update(sent, x, y), 4, attack="trap_weights")
    assert float(result.module.relative_residual[0]) <= CERTIFIED_RESIDUAL
    assert result.exact.tolist() == [False] and result.failed.tolist() == [False]
    assert result.module.notes == ["3 of 4 slots in 1 of 1 victims hold filler (the middle of the data range; fewer "
                                   "candidate rows than inputs): not reconstructions (victims 0)"]


def test_trap_weights_that_read_nothing_off_a_table_give_a_failed_result_not_filler_rows_marked_ok():
    """On Adult's encoded rows no trap-weight candidate lies in the data range: every slot would be the same
    filler row; the victims are failed results and a note says nothing was read."""
    from leakage.data.datamodule import VictimDataModule
    from leakage.data.kinds.tabular import TabularKind

    dm = VictimDataModule(BundledTable(), batch_size=4, num_victims=2)
    kind = dm.table.kind
    server = leakage.TrapWeightServer()
    sent = server.send(build_model("tabular_mlp", dm.input_shape, dm.num_classes, seed=1234), dm.input_shape)
    rows, labels = dm.table.encode(range(8))
    update = {k: torch.stack([leakage.client_update(sent, rows[i:i + 4], labels[i:i + 4])[k] for i in (0, 4)])
              for k in dict(sent.named_parameters())}
    result = leakage.invert(sent, update, dm.input_shape, dm.num_classes, batch_size=4, attack="trap_weights",
                            server=server, kind=TabularKind(kind.schema))
    assert result.failed.tolist() == [True, True] and result.exact.tolist() == [False, False]
    assert result.module.notes == ["2 of 2 victims failed: no candidate rows found in the update (victims 0, 1), "
                                   "nothing was read"]


def test_masked_secure_aggregation_is_not_certified_and_the_report_says_what_is(tmp_path):
    cli = fit_in_process(tmp_path, "cifar_imprint.yaml", "--data.batch_size", "4", "--data.num_victims", "2",
                         "--trainer.callbacks+=leakage.federated.defenses.SecureAggregation", "--trainer.callbacks.clients", "2",
                         "--trainer.callbacks.target", "masked")
    assert cli.model.exact().tolist() == [False, False]
    assert "exact (" not in cli.stdout
    cli = fit_in_process(tmp_path, "cifar_imprint.yaml", "--data.batch_size", "4", "--data.num_victims", "2")
    assert cli.model.exact().tolist() == [True, True]
    assert ("exact (every slot read off the update, and the recovered batch reproduces the whole observed update "
            f"to relative residual <= {CERTIFIED_RESIDUAL:g}): 2/2 victims") in cli.stdout


def test_an_imprint_defense_sweep_certifies_only_its_undefended_cells(tmp_path):
    import csv

    import yaml

    from leakage.cli import main
    from conftest import CONFIGS

    cfg = yaml.safe_load((CONFIGS / "cifar_imprint.yaml").read_text())
    cfg["data"].update(batch_size=4, num_victims=2)
    cfg.pop("report", None)
    cfg["sweep"] = {"output": str(tmp_path / "sweep"), "success_ssim": 0.99, "refine": 0, "defenses": [
        {"name": "noise", "class_path": "leakage.federated.defenses.GaussianNoise", "param": "sigma", "values": [0.0, 0.1],
         "stronger": "larger"}]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["sweep", "--config", str(path)])
    rows = {float(r["value"]): r for r in csv.DictReader(open(tmp_path / "sweep" / "results.csv"))}
    assert rows[0.0]["status"] == "ok" and rows[0.0]["exact"] == "2" and rows[0.0]["image_success"] == "8"
    assert rows[0.1]["status"] == "ok" and rows[0.1]["exact"] == "0" and rows[0.1]["image_success"] == "0"


# ------------------------------------------------------- refused before the run's folder exists
@pytest.mark.parametrize("config, extra, reason", [
    ("mnist_dlg.yaml", ["--data.num_victims", "1", "--data.batch_size", "16", "--model.labels", "yin"],
     "strategy 'yin' assumes distinct labels: batch_size 16 > 10 classes"),
    ("mnist_imprint.yaml", ["--data.server", "Server"],
     "the imprint attack reads what a malicious server planted: run it with --data.server ImprintServer"),
    ("mnist_trap_weights.yaml", ["--data.server", "ImprintServer"],
     "the trap_weights attack reads what a malicious server planted: run it with --data.server TrapWeightServer"),
    ("mnist_cpa.yaml", ["--data.batch_size", "1"], "the Cocktail Party Attack unmixes a batch of 2 records or more"),
    ("mnist_analytic.yaml", ["--data.batch_size", "2"], "label strategy 'idlg' recovers the label of a single image"),
], ids=["yin B>K", "imprint honest", "trap on imprint", "cpa B=1", "idlg B=2"])
def test_a_mismatch_the_settings_decide_is_one_line_and_leaves_no_run_folder(capsys, tmp_path, config, extra,
                                                                                reason):
    from conftest import CONFIGS, cli_args, cli_error, run_dirs

    line = cli_error(capsys, cli_args(tmp_path, "--config", str(CONFIGS / config), *extra))
    assert reason in line
    assert run_dirs(tmp_path) == [] and not any(tmp_path.rglob("*.tfevents.*")) and not any(tmp_path.rglob("config.yaml"))


@pytest.mark.parametrize("before", [True, False], ids=["--attack before --config", "--attack after --config"])
def test_attack_on_the_command_line_wins_wherever_it_stands(capsys, tmp_path, before):
    from conftest import CONFIGS, cli_args
    from leakage.cli import main

    attack = ["--attack", "trap_weights"]
    config = ["--config", str(CONFIGS / "mnist_imprint.yaml")]
    main(cli_args(tmp_path, *(attack + config if before else config + attack), "--data.server", "TrapWeightServer",
                  "--model.model", "mlp", "--data.batch_size", "4"))
    assert "\nattack: trap-weight read-out" in capsys.readouterr().out


def test_bias_count_on_a_model_without_a_last_bias_is_refused_before_the_attack_runs():
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10, bias=False))
    x, y = leakage.bundled_images("mnist", range(2))
    update = leakage.client_update(model, x, y)
    with pytest.raises(ValueError, match="^strategy 'bias_count' needs a last nn.Linear layer with a bias; "
                                         "use 'weight_count'$"):
        leakage.invert(model, update, SHAPE, 10, attack="cpa", batch_size=2, labels="bias_count")
    result = leakage.invert(model, update, SHAPE, 10, attack="cpa", batch_size=2, labels="weight_count")
    assert result.labels.shape == (1, 2)
