"""The ``leakage`` command end to end: overrides, run artifacts, TensorBoard, captured gradients."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from leakage.cli import main
from leakage.federated.client import client_gradients, save_gradients
from leakage.data.datamodule import VictimDataModule
from leakage.engine.models import build_model

from conftest import CONFIGS, REPO, bundled_labels, cli_args, cli_error, run_dirs
from leakage.data.sources import Bundled


def _repo_logs():
    logs = REPO / "logs"
    return sorted(p.relative_to(logs) for p in logs.rglob("*")) if logs.exists() else []


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """One short DLG run from the shipped config, with command-line overrides."""
    save_dir = tmp_path_factory.mktemp("cli_run")
    before = _repo_logs()
    args = cli_args(
        save_dir,
        "--config", str(CONFIGS / "cifar_dlg.yaml"),
        "--trainer.max_steps", "3",
        "--data.indices", "[0,3]",
        "--model.optimizer.max_iter", "2",
        "--trainer.log_every_n_steps", "1",
        "--report.log_every_n_steps", "1",
        "--report.image_every_n_steps", "2",
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(args)
    assert _repo_logs() == before  # nothing written into the repository's logs/
    dirs = run_dirs(save_dir)
    assert [d.relative_to(save_dir).as_posix() for d in dirs] == ["cifar_dlg/version_0"]
    return dirs[0], out.getvalue(), save_dir


def test_cli_run_writes_the_artifacts(cifar_run):
    run, stdout, _ = cifar_run
    for name in ("metrics.csv", "metrics.json", "metrics.txt", "gallery.png", "history.png", "config.yaml"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    for name in ("gallery.png", "history.png"):
        with Image.open(run / name) as img:
            assert img.size[0] > 100 and img.size[1] > 100

    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    labels = bundled_labels("cifar10")
    assert len(rows) == 2  # one row per victim
    assert [r["indices"] for r in rows] == ["0", "3"]
    assert [int(r["true_labels"]) for r in rows] == [labels[0], labels[3]]
    for r in rows:
        assert r["status"] == "ok"
        assert -1 <= float(r["ssim"]) <= 1 and math.isfinite(float(r["grad_l2"]))

    report = json.loads((run / "metrics.json").read_text())
    assert report["summary"]["victims"] == 2 and report["success_ssim"] == 0.9
    assert [v["indices"] for v in report["victims"]] == [[0], [3]]
    assert float(rows[1]["ssim"]) == pytest.approx(report["victims"][1]["ssim"])

    # the printed table and its summary line
    assert "victim  indices  true_labels" in stdout
    assert "reconstructed (SSIM >= 0.9): " in stdout and "/2" in stdout
    assert (run / "metrics.txt").read_text().strip() in stdout


def test_cli_prints_its_thread_count_first(cifar_run):
    import torch

    _, stdout, _ = cifar_run
    first = stdout.splitlines()[:3]
    assert f"torch threads: {torch.get_num_threads()} per process (OMP_NUM_THREADS=N or torch.set_num_threads " \
           "changes it; on a shared machine use 1 per process)" in first, first


def test_cli_saved_config_holds_the_overrides(cifar_run):
    run, _, save_dir = cifar_run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["trainer"]["max_steps"] == 3
    assert cfg["data"]["indices"] == [0, 3]
    assert cfg["model"]["optimizer"]["class_path"] == "leakage.attacks.settings.LBFGS"  # from the yaml
    assert cfg["model"]["optimizer"]["init_args"]["max_iter"] == 2
    assert cfg["model"]["labels"] == "joint"
    assert cfg["trainer"]["logger"]["init_args"]["save_dir"] == str(save_dir)


def test_tensorboard_scalars_and_images(cifar_run):
    run, _, _ = cifar_run
    events = list(run.glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("attack/median_loss", "attack/log10_median_loss", "victim_00/ssim", "victim_00/psnr",
                "victim_00/mse", "victim_01/ssim", "victim_00/loss", "victim_00/log10_loss", "attack/ssim_mean",
                "attack/reconstructed", "final/ssim_mean", "final/psnr_mean", "final/victims"):
        assert tag in tags["scalars"], tag
    # Lightning's extras are gone: no epoch, no hp_metric, no mean loss the failed victims dominate
    assert not {"epoch", "hp_metric", "attack/loss"} & set(tags["scalars"])
    loss = acc.Scalars("attack/median_loss")
    assert len(loss) == 3 and all(math.isfinite(e.value) and e.value > 0 for e in loss)
    for e, e10 in zip(loss, acc.Scalars("attack/log10_median_loss")):
        assert e10.value == pytest.approx(math.log10(e.value), abs=1e-5)
    ssim = acc.Scalars("victim_00/ssim")
    assert [e.step for e in ssim] == [1, 2, 3]
    assert all(-1 <= e.value <= 1 for e in ssim)
    assert all(e.value > 0 for e in acc.Scalars("victim_00/mse"))
    assert acc.Scalars("final/victims")[-1].value == 2

    report = json.loads((run / "metrics.json").read_text())
    assert acc.Scalars("final/ssim_mean")[-1].value == pytest.approx(report["summary"]["ssim_mean"], abs=1e-6)
    assert acc.Scalars("final/ssim_mean")[-1].step == 3
    assert acc.Scalars("attack/reconstructed")[-1].value == report["summary"]["success"]

    # the labelled gallery and the loss history: first step, every 2 steps, and the end
    for tag in ("gallery", "history"):
        images = acc.Images(tag)
        assert [e.step for e in images] == [1, 2, 3], tag
        with Image.open(io.BytesIO(images[-1].encoded_image_string)) as img:
            assert img.size == (images[-1].width, images[-1].height)
            assert img.size[0] > 200 and img.size[1] > 200  # readable: tiles upscaled, captions


def test_cli_rerun_from_saved_config_reproduces(cifar_run, tmp_path):
    run, _, _ = cifar_run
    with contextlib.redirect_stdout(io.StringIO()):
        main(cli_args(tmp_path, "--config", str(run / "config.yaml")))
    (again,) = run_dirs(tmp_path)
    first = json.loads((run / "metrics.json").read_text())["victims"]
    second = json.loads((again / "metrics.json").read_text())["victims"]
    for a, b in zip(first, second):
        assert a["ssim"] == pytest.approx(b["ssim"], abs=1e-6)
        assert a["grad_l2"] == pytest.approx(b["grad_l2"], rel=1e-5)


def _leakage_exe():
    exe = shutil.which("leakage") or os.path.join(os.path.dirname(sys.executable), "leakage")
    assert os.path.exists(exe), "the leakage console script is not installed"
    return exe


def test_console_script_end_to_end(tmp_path):
    before = _repo_logs()
    proc = subprocess.run(
        [_leakage_exe(), *cli_args(
            tmp_path,
            "--config", "configs/mnist_dlg.yaml",
            "--trainer.max_steps", "3",
            "--data.num_victims", "2",
            "--model.model", "mlp",
            "--model.labels", "idlg",
            "--model.dummies.init", "constant",
        )],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _repo_logs() == before
    (run,) = run_dirs(tmp_path)
    assert run.parent.name == "mnist_dlg"
    report = json.loads((run / "metrics.json").read_text())
    labels = bundled_labels("mnist")
    assert [v["true_labels"] for v in report["victims"]] == [[labels[0]], [labels[1]]]
    assert [v["recovered_labels"] for v in report["victims"]] == [[labels[0]], [labels[1]]]
    # an MLP target with analytic labels leaks both digits within three L-BFGS steps
    assert report["summary"]["success"] == 2, report
    assert "reconstructed (SSIM >= 0.9): 2/2" in proc.stdout
    for name in ("metrics.csv", "gallery.png", "history.png", "config.yaml"):
        assert (run / name).is_file()


def test_console_script_bad_input(tmp_path):
    proc = subprocess.run(
        [_leakage_exe(), *cli_args(tmp_path, "--data.source.dataset", "svhn")],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "leakage: error: unknown dataset 'svhn'; choose one of cifar10, cifar100, mnist, fashion_mnist"
    )
    assert run_dirs(tmp_path) == []


def test_console_script_parser_error_is_one_line(tmp_path):
    """From the console LightningCLI reads sys.argv itself: its parser errors are one line too."""
    proc = subprocess.run(
        [_leakage_exe(), *cli_args(tmp_path, "--model.objective.distance", "manhattan")],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 2
    assert proc.stderr == ("leakage: error: model.objective: leakage.attacks.settings.Objective: distance: 'manhattan' "
                           "is not one of l2, cosine, tag\n")
    assert run_dirs(tmp_path) == []


def test_console_script_without_a_command(tmp_path):
    proc = subprocess.run([_leakage_exe()], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("usage: leakage fit") and len(lines) <= 4
    assert lines[-1].startswith("leakage: error: choose a command: `leakage fit`, `leakage sweep` or `leakage audit`")


# ----------------------------------------------------------------------- captured gradients
@pytest.fixture
def mnist_gradient_file(tmp_path):
    model = build_model("mlp", (1, 28, 28), 10)
    secret = VictimDataModule(Bundled("mnist"), indices=[4, 5]).load_victims()
    path = tmp_path / "captured.safetensors"
    save_gradients(client_gradients(model, secret.images, secret.labels), path)
    return path, secret.labels[:, 0].tolist()


def test_cli_attack_on_a_gradient_file(tmp_path, mnist_gradient_file):
    path, labels = mnist_gradient_file
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(cli_args(
            tmp_path / "logs",
            "--data.source", "CapturedGradients",
            "--data.source.gradient_file", str(path),
            "--data.source.dataset", "mnist",
            "--model.model", "mlp",
            "--model.labels", "idlg",
            "--trainer.max_steps", "2",
        ))
    (run,) = run_dirs(tmp_path / "logs")
    report = json.loads((run / "metrics.json").read_text())
    assert len(report["victims"]) == 2
    for v, label in zip(report["victims"], labels):
        assert v["ssim"] is None and v["psnr"] is None  # no secret to score against: null in strict JSON
        assert math.isfinite(v["grad_l2"]) and v["grad_l2"] >= 0
        assert v["indices"] == [] and v["true_labels"] == []
        assert v["recovered_labels"] == [label]
    assert "no victim images (attacking captured gradients)" in out.getvalue()
    assert (run / "gallery.png").is_file()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["source"]["class_path"] == "leakage.data.sources.CapturedGradients"


def test_a_moved_setting_is_refused_in_one_line_naming_its_new_place(tmp_path):
    from leakage.fit import check_moved_settings, moved_settings

    class Data:
        MOVED = {"num_bins": "--data.server ImprintServer --data.server.num_bins N"}

    moved = moved_settings(Data, object)
    assert moved == {"data.num_bins": "--data.server ImprintServer --data.server.num_bins N"}
    for args in (["--data.num_bins", "64"], ["--data.num_bins=64"]):
        with pytest.raises(ValueError, match=r"^--data.num_bins has moved: --data.server ImprintServer"):
            check_moved_settings(args, moved)
    config = tmp_path / "old.yaml"
    config.write_text("data:\n  num_bins: 64\n")
    with pytest.raises(ValueError, match=r"old.yaml: data.num_bins has moved: --data.server ImprintServer"):
        check_moved_settings(["--config", str(config)], moved)
    check_moved_settings(["--data.batch_size", "4", "--model.num_bins", "1"], moved)  # others untouched


@pytest.mark.parametrize("args, place", [
    (["--data.num_bins", "64"], "--data.server ImprintServer --data.server.num_bins N (in a config: data.server.init_args.num_bins)"),
    (["--data.protocol", "fedavg"], "--data.client FedAvg"),
    (["--data.local_steps=5"], "--data.client FedAvg --data.client.local_steps VALUE (in a config: data.client.init_args.local_steps)"),
    (["--data.dataset", "mnist"], "--data.source Bundled --data.source.dataset NAME"),
    (["--data.root", "data"], "--data.source Torchvision --data.source.root PATH (in a config: data.source.init_args.root)"),
    (["--data.trap_scale", "0.5"], "--data.server TrapWeightServer --data.server.trap_scale X"),
])
def test_a_removed_flat_data_setting_is_refused_naming_its_new_place(capsys, tmp_path, args, place):
    line = cli_error(capsys, cli_args(tmp_path, *args))
    assert line.startswith(f"leakage: error: {args[0][2:].split('=')[0]} has moved: {place}"), line


def test_a_removed_flat_data_setting_in_a_config_is_refused_naming_its_new_place(capsys, tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  source: bundled\n  dataset: mnist\n  server: imprint\n  num_bins: 256\n")
    line = cli_error(capsys, cli_args(tmp_path, "--config", str(old)))
    assert line.startswith(f"leakage: error: {old}: data.dataset has moved: --data.source Bundled --data.source.dataset"), line
    every = set(VictimDataModule.MOVED)
    assert {"dataset", "root", "download", "folder", "path", "gradient_file", "label_column", "schema", "schema_from",
            "standardize_onehot", "categorical_columns", "continuous_columns", "image_size", "channels", "num_classes",
            "protocol", "client_mode", "local_steps", "local_epochs", "local_lr", "local_batch_size", "shuffle",
            "shuffle_seed", "share", "num_bins", "feature_mean", "feature_std", "trap_scale"} == every


def test_the_server_and_its_settings_from_the_command_line(capsys, tmp_path):
    from leakage.cli import main

    main(cli_args(tmp_path, "--attack", "imprint", "--model.model", "lenet", "--data.source.dataset", "mnist",
                  "--data.batch_size", "8", "--data.server", "ImprintServer", "--data.server.num_bins", "64",
                  "--trainer.max_steps", "1"))
    out = capsys.readouterr().out
    assert "imprint module with 64 bins" in out and "Gaussian of mean 0.1239" in out, out  # MNIST's statistics
    (run,) = run_dirs(tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["server"] == {"class_path": "leakage.ImprintServer",
                                     "init_args": {"num_bins": 64, "feature_mean": None, "feature_std": None}}


@pytest.mark.parametrize("section, name, shows, hides", [
    ("server", "ImprintServer", "--data.server.num_bins", "--data.server.trap_scale"),
    ("source", "Torchvision", "--data.source.download", "--data.source.gradient_file"),
    ("client", "FedAvg", "--data.client.local_epochs", "--data.source"),
])
def test_one_class_help_lists_only_its_settings(capsys, section, name, shows, hides):
    from leakage.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["fit", f"--data.{section}.help", name])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert shows in out and hides not in out, out


def test_an_optimizer_class_and_its_settings_from_the_command_line(tmp_path):
    """`--model.optimizer Adam --model.optimizer.lr 0.1` over a config's L-BFGS (with L-BFGS settings):
    the attack runs Adam at that lr; the saved config and the flat hparams record say so."""
    import torch

    from leakage.attacks.settings import Adam, Objective

    from conftest import fit_in_process

    cli = fit_in_process(tmp_path, "cifar_dlg.yaml", "--model.optimizer", "Adam", "--model.optimizer.lr", "0.1",
                         "--model.objective.tv_weight", "0.01", "--trainer.max_steps", "2", "--data.num_victims", "1")
    assert cli.model.optimizer == Adam(lr=0.1)
    assert cli.model.objective == Objective(distance="l2", tv_weight=0.01)
    opt = cli.trainer.optimizers[0]
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == 0.1
    assert cli.model.hparams["optimizer"] == "adam" and cli.model.hparams["lr"] == 0.1
    assert "max_iter" not in cli.model.hparams  # only the chosen optimizer's settings
    run = run_dirs(tmp_path)[0]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["optimizer"] == {"class_path": "leakage.attacks.settings.Adam",
                                         "init_args": {"lr": 0.1, "lr_decay": False}}


@pytest.mark.parametrize(
    "key, value, place",
    [
        ("model.lbfgs_history_size", "3", "--model.optimizer LBFGS --model.optimizer.history_size N"),
        ("model.restarts", "2", "--model.dummies.restarts (in a config: model.dummies.restarts)"),
        ("model.distance", "cosine", "--model.objective.distance (in a config: model.objective.distance)"),
        ("model.refine_steps", "20", "--model.budget.refine_steps (in a config: model.budget.refine_steps)"),
        ("model.lr", "0.1", "--model.optimizer LBFGS|Adam|SignedAdam --model.optimizer.lr X"),
    ],
)
def test_a_removed_attack_setting_is_refused_naming_its_new_place(capsys, tmp_path, key, value, place):
    from conftest import cli_error

    for args in ([f"--{key}", value], [f"--{key}={value}"]):
        line = cli_error(capsys, cli_args(tmp_path, *args))
        assert line.startswith(f"leakage: error: {key} has moved: {place}"), line
    config = tmp_path / "old.yaml"
    name = key.split(".", 1)[1]
    config.write_text(f"model:\n  {name}: {value}\n")
    line = cli_error(capsys, cli_args(tmp_path, "--config", str(config)))
    assert line.startswith(f"leakage: error: {config}: {key} has moved: {place}"), line
    assert run_dirs(tmp_path) == []


def test_an_optimizer_by_class_name_import_path_or_mapping_is_left_to_the_parser():
    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.fit import check_object_names, object_choices

    choices = object_choices(GradientInversion)
    assert sorted(c.__name__ for c in choices["optimizer"]) == ["Adam", "LBFGS", "SignedAdam"]
    for value in ("Adam", "leakage.attacks.settings.SignedAdam", '{"class_path": "Adam", "init_args": {"lr": 0.1}}'):
        check_object_names(["--model.optimizer", value], choices)
        check_object_names([f"--model.optimizer={value}"], choices)
    with pytest.raises(ValueError, match=r"^--model.optimizer 'lbfgs': the optimizer is a class now: "
                                         r"--model.optimizer LBFGS \(or Adam, SignedAdam\)$"):
        check_object_names(["--model.optimizer", "lbfgs"], choices)
