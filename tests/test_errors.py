"""Bad input through the CLI: exit status 2 and one clear ``leakage: error:`` line, no traceback."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import zlib

import pytest
import torch

from leakage.cli import main
from leakage.federated.client import client_gradients, save_gradients
from leakage.engine.models import build_model

from conftest import REPO, cli_args, cli_error, run_dirs


def _err(capsys, tmp_path, *args):
    """The one error line of ``leakage fit`` on bad input, which must leave no run folder behind."""
    line = cli_error(capsys, cli_args(tmp_path / "logs", *args))
    assert run_dirs(tmp_path / "logs") == []
    return line


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data.source.dataset", "svhn"], "unknown dataset 'svhn'; choose one of cifar10, cifar100, mnist, fashion_mnist"),
        (["--model.model", "resnet"], "unknown model 'resnet'; choose one of lenet, simple_cnn, mlp"),
        (["--data.indices", "[0,1,2]", "--data.batch_size", "2"], "3 indices do not split into victims of batch_size 2"),
        (["--data.source.dataset", "cifar100"], "the package bundles cifar10 and mnist images only"),
        (["--data.source", "CapturedGradients"], "data.source: leakage.data.sources.CapturedGradients: gradient_file must be given"),
        (["--model.dummies.restarts", "0"], "restarts must be >= 1"),
        (["--model.optimizer.lr", "-1"], "lr must be > 0"),
        (["--model.budget.stall_steps", "-1"], "stall_steps must be an integer >= 0 (0: off), got -1"),
    ],
)
def test_bad_settings_fail_before_the_run(capsys, tmp_path, args, expected):
    line = _err(capsys, tmp_path, *args)
    assert line.startswith(f"leakage: error: {expected}")
    assert run_dirs(tmp_path / "logs") == []


def test_an_unknown_source_class_is_one_line_naming_it(capsys, tmp_path):
    line = _sole_line(capsys, tmp_path, "--data.source", "hub")
    assert line.startswith("leakage: error: data.source: ") and line.endswith("hub")


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("model.labels", "oracle", "idlg"),
        # a setting of an object: named with the object's class
        ("model.objective.distance", "manhattan", "l2"),
        ("model.dummies.init", "zeros", "randn"),
    ],
)
def test_unknown_choice_is_rejected_by_the_parser(capsys, tmp_path, key, value, allowed):
    line = _sole_line(capsys, tmp_path, f"--{key}", value)
    section, _, name = key.rpartition(".")
    if section in ("model.objective", "model.dummies"):
        cls = {"model.objective": "Objective", "model.dummies": "Dummies"}[section]
        key = f"{section}: leakage.attacks.settings.{cls}: {name}"
    assert line.startswith(f"leakage: error: {key}: '{value}' is not one of ")
    assert allowed in line.split("is not one of ", 1)[1]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model.optimizer", "adam"], "model.optimizer 'adam': the optimizer is a class now: "
                                        "--model.optimizer Adam (or LBFGS, SignedAdam)"),
        (["--model.optimizer=signed_adam"], "model.optimizer 'signed_adam': the optimizer is a class now: "
                                            "--model.optimizer SignedAdam (or Adam, LBFGS)"),
        (["--model.optimizer", "sgd"], "model.optimizer 'sgd': unknown optimizer; choose one of "),
    ],
)
def test_an_optimizer_by_its_old_name_is_refused_naming_its_class(capsys, tmp_path, args, expected):
    assert _sole_line(capsys, tmp_path, *args).startswith(f"leakage: error: {expected}")


def test_an_optimizer_by_its_old_name_in_a_config_is_refused(capsys, tmp_path):
    config = tmp_path / "old.yaml"
    config.write_text("model:\n  optimizer: lbfgs\n")
    assert _sole_line(capsys, tmp_path, "--config", str(config)) == (
        f"leakage: error: {config}: model.optimizer 'lbfgs': the optimizer is a class now: "
        "--model.optimizer LBFGS (or Adam, SignedAdam)")


def _sole_line(capsys, tmp_path, *args):
    """Run ``leakage fit`` on bad input: its whole stderr must be one ``leakage: error:`` line
    (no 100-line usage, no traceback) and no run folder may be left behind."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(cli_args(tmp_path / "logs", *args))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("leakage: error: "), err
    assert run_dirs(tmp_path / "logs") == []
    return err.strip()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model.labelz", "idlg"],
         "unknown option --model.labelz (did you mean --model.labels? `leakage fit --help-all` lists every option)"),
        (["--model.optimizer.lrr", "0.1"], "model.optimizer: leakage.attacks.settings.LBFGS: no option 'lrr'"),
        (["--model.no_such_option", "1"], "unknown option --model.no_such_option (`leakage fit --help-all` lists every option)"),
        (["--data.batch_size", "two"], "data.batch_size: expected an int, got 'two'"),
        (["--data.indices", "[0,a]"], "data.indices: expected an int, got 'a'"),
        (["--trainer.callbacks+=no.such.Class"], "trainer.callbacks: cannot import 'no.such.Class': No module named 'no'"),
        (["--trainer.callbacks+=torch.nn.Linear"], "trainer.callbacks: torch.nn.Linear is not a Callback"),
        (["--trainer.callbacks+=leakage.federated.defenses.GaussianNoise", "--trainer.callbacks.sigmaa", "1"],
         "trainer.callbacks: leakage.federated.defenses.GaussianNoise: no option 'sigmaa'"),
        (["--trainer.callbacks+=leakage.federated.defenses.GaussianNoise"],
         "trainer.callbacks: leakage.federated.defenses.GaussianNoise: sigma must be given"),
        (["--trainer.callbacks+=leakage.federated.defenses.GaussianNoise", "--trainer.callbacks.sigma", "lots"],
         "trainer.callbacks: leakage.federated.defenses.GaussianNoise: sigma: expected a float, got 'lots'"),
        (["--trainer.logger", "nowhere.Logger"], "trainer.logger: cannot import 'nowhere.Logger': No module named 'nowhere'"),
        (["stray"], "unexpected argument 'stray': settings take the form --section.option VALUE"),
    ],
)
def test_parser_errors_are_one_line(capsys, tmp_path, args, expected):
    assert _sole_line(capsys, tmp_path, *args).startswith(f"leakage: error: {expected}")


# ------------------------------------------------------------------------------- config files
def test_corrupt_config_file(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [lenet\n  distance: l2\n")
    line = _sole_line(capsys, tmp_path, "--config", str(path))
    assert line == f"leakage: error: cannot parse config file {path}: expected ',' or ']', but got ':' (line 2, column 11)"


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: None, "config file not found: {p}"),
        (lambda p: p.mkdir(), "config {p} is a directory, not a config file"),
        (lambda p: p.write_text("- fit\n- data\n"),
         "config file {p} must hold a mapping of settings (trainer:, model:, data:, ...), got a list"),
        (lambda p: p.write_bytes(b"model: \xff\xfe\n"), "cannot read config file {p}: "),
        (lambda p: p.write_text("data:\n  no_such_key: 1\n"),
         "unknown config key 'data.no_such_key' (`leakage fit --help-all` lists every option)"),
    ],
    ids=["missing", "directory", "list", "binary", "unknown-key"],
)
def test_bad_config_files(capsys, tmp_path, make, expected):
    path = tmp_path / "config.yaml"
    make(path)
    line = _sole_line(capsys, tmp_path, "--config", str(path))
    assert line.startswith("leakage: error: " + expected.format(p=path))


# ---------------------------------------------------------------------------------- commands
@pytest.mark.parametrize("command", ["validate", "test", "predict", "train"])
def test_only_fit_and_sweep_are_commands(capsys, command):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([command])
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"leakage: error: unknown command {command!r}: use `leakage fit`, `leakage sweep` or `leakage audit`\n"


def test_fit_is_the_only_lightning_command():
    from leakage.fit import LeakageCLI

    assert list(LeakageCLI.subcommands()) == ["fit"]


def test_no_command_prints_a_short_usage(capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: leakage fit ") and "leakage sweep" in err
    assert err.splitlines()[-1] == "leakage: error: choose a command: `leakage fit`, `leakage sweep` or `leakage audit` (`leakage --help` says more)"
    assert len(err.splitlines()) <= 4


def test_option_before_the_command(capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["--model.optimizer.lr", "1", "fit"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "leakage: error: start with a command: `leakage fit --model.optimizer.lr ...` or `leakage sweep ...`\n"


def test_top_level_help_lists_fit_and_sweep(capsys):
    capsys.readouterr()
    main(["--help"])
    out = capsys.readouterr().out
    commands = out.split("commands:", 1)[1].split()
    assert "fit" in commands and "sweep" in commands
    assert "validate" not in out and "predict" not in out


def test_fit_help_is_a_short_page_and_help_all_the_full_one(capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: leakage fit ")
    assert "Run one gradient-inversion attack" in out
    for option in ("--model.objective OBJECTIVE", "--model.optimizer.help CLASS", "Classes: Adam, LBFGS, SignedAdam",
                   "--data.source", "ImprintServer", "--trainer.max_steps", "--report.success_ssim", "--help-all"):
        assert option in out, option
    assert "--trainer.overfit_batches" not in out  # Lightning's other options are on the full page
    assert len(out.splitlines()) < 150
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help-all"])
    assert exc.value.code == 0
    full = capsys.readouterr().out
    assert full.startswith("usage: leakage [options] fit ")
    assert "--trainer.overfit_batches" in full and "--model.optimizer.help" in full
    assert len(full.splitlines()) > 300


@pytest.mark.parametrize(
    "args, present, absent",
    [
        (["--model.optimizer.help", "Adam"], ["--model.optimizer.lr LR", "--model.optimizer.lr_decay"],
         ["history_size"]),
        (["--model.optimizer.help", "LBFGS"], ["--model.optimizer.history_size", "--model.optimizer.early_exit"],
         ["lr_decay"]),
        (["--model.objective.help", "Objective"], ["--model.objective.distance {l2,cosine,tag}",
                                                   "--model.objective.tv_weight"], ["--model.objective.restarts"]),
        (["--model.budget.help", "Budget"], ["--model.budget.refine_steps"], ["distance"]),
    ],
)
def test_one_settings_class_help(capsys, args, present, absent):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["fit", *args])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for text in present:
        assert text in out, text
    for text in absent:
        assert text not in out, text


@pytest.mark.parametrize("dataset, shipped, index", [("cifar10", 20, 25), ("mnist", 1000, 1000)])
def test_bundled_index_out_of_range(capsys, tmp_path, dataset, shipped, index):
    line = _err(capsys, tmp_path, "--data.source.dataset", dataset, "--data.indices", f"[0,{index}]", "--trainer.max_steps", "1")
    assert line.startswith(f"leakage: error: the bundled {dataset} images are test-split indices 0-{shipped - 1}; "
                           f"index {index} is not shipped")
    assert "--data.source Torchvision" in line and "--data.source.root PATH" in line


def test_idlg_with_batches_of_two(capsys, tmp_path):
    # checked when the attack attaches to the (defended) observation, after the run folder exists
    line = cli_error(capsys, cli_args(tmp_path / "logs", "--model.labels", "idlg", "--data.batch_size", "2",
                                      "--data.indices", "[0,1]"))
    assert line == (
        "leakage: error: label strategy 'idlg' recovers the label of a single image: "
        "use batch_size 1, labels 'joint' or a batch strategy (bias_count, weight_count, yin, ilrg)"
    )


@pytest.mark.parametrize("steps", ["-1", "0", "-5"])
def test_missing_step_budget(capsys, tmp_path, steps):
    # -1 is Lightning's "no limit", which the Trainer accepts; other negative values it refuses itself
    line = _err(capsys, tmp_path, "--data.source.dataset", "mnist", "--model.model", "mlp", "--trainer.max_steps", steps)
    assert line == ("leakage: error: set the attack budget with --trainer.max_steps N (one step is one attack "
                    f"iteration): N must be >= 1, got {steps}")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model.optimizer.lr", ".nan"], "model.optimizer.lr must be a finite number, got nan"),
        (["--model.objective.tv_weight", ".inf"], "model.objective.tv_weight must be a finite number, got inf"),
        (["--report.success_ssim", ".nan"], "report.success_ssim must be a finite number, got nan"),
        (["--trainer.callbacks+=leakage.federated.defenses.TopK", "--trainer.callbacks.keep_ratio=-.inf"],
         "trainer.callbacks[0].keep_ratio must be a finite number, got -inf"),
    ],
)
def test_non_finite_settings(capsys, tmp_path, args, expected):
    assert _err(capsys, tmp_path, *args) == f"leakage: error: {expected}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_accelerator_without_a_gpu(capsys, tmp_path, accelerator):
    line = _err(capsys, tmp_path, "--trainer.accelerator", accelerator, "--trainer.max_steps", "1")
    assert line.startswith(f"leakage: error: cannot set up the trainer with --trainer.accelerator {accelerator}: ")
    assert line.endswith("(use --trainer.accelerator cpu, or auto, on a machine without one)")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--trainer.devices", "-3"], "`devices` selected with `CPUAccelerator` should be an int > 0"),
        (["--trainer.max_epochs", "-5"], "`max_epochs` must be a non-negative integer or -1"),
        (["--trainer.accelerator", "abacus"], "You selected an invalid accelerator name: `accelerator='abacus'`"),
    ],
)
def test_trainer_refusals(capsys, tmp_path, args, expected):
    line = _err(capsys, tmp_path, *args, "--trainer.max_steps", "1")
    assert line.startswith(f"leakage: error: cannot set up the trainer: {expected}")


def test_torchvision_without_dataset_root(capsys, tmp_path):
    root = tmp_path / "datasets"
    line = _err(capsys, tmp_path, "--data.source", "Torchvision", "--data.source.dataset", "mnist", "--data.source.root", str(root))
    assert line.startswith(f"leakage: error: mnist not found under {str(root)!r}")
    assert "--data.source.download true" in line
    assert not root.exists() or not any(p.is_file() for p in root.rglob("*"))


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data.source", "ImageFolder", "--data.source.folder", "f", "--data.source.num_classes", "1"], "num_classes must be >= 2 (a classifier tells two classes or more apart), got 1"),
        (["--data.source", "ImageFolder", "--data.source.folder", "f", "--data.source.num_classes", "0"], "num_classes must be >= 2 (a classifier tells two classes or more apart), got 0"),
        (["--data.source.image_size", "0"], "image_size must be >= 1, got 0"),
        (["--data.source.image_size", "2"],
         "image_size 2 is too small to score the reconstructions: SSIM needs images of at least 6x6 pixels"),
        (["--data.num_victims", "-1"], "batch_size and num_victims must be >= 1, got 1 and -1"),
        (["--data.source.channels", "4"], "channels must be 1 or 3, got 4"),
        (["--data.batch_size", "1.5"], "data.batch_size: expected an int, got '1.5'"),
        (["--data.source.image_size", "big"], "data.source: leakage.data.sources.Bundled: image_size: expected an int, got 'big'"),
    ],
)
def test_bad_data_settings(capsys, tmp_path, args, expected):
    assert _err(capsys, tmp_path, *args) == f"leakage: error: {expected}"


def test_model_that_cannot_take_the_data(capsys, tmp_path):
    """Captured gradients of 3x3 images (no images to score, so no SSIM limit): SimpleCNN's two poolings
    need 4 pixels per side, found by one forward pass at start-up."""
    line = _err(capsys, tmp_path, "--data.source", "CapturedGradients", "--data.source.gradient_file", str(tmp_path / "g.safetensors"),
                "--data.source.image_size", "3", "--model.model", "simple_cnn", "--trainer.max_steps", "1")
    assert line.startswith("leakage: error: model 'simple_cnn' cannot take inputs of shape (3, 3, 3): ")
    assert "Output size is too small" in line


# ------------------------------------------------------------------------------ image folders
def _png_declaring(path, width, height):
    """A real 1x1 PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    from PIL import Image

    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))


def _truncated_png(path):
    from PIL import Image

    Image.effect_noise((64, 64), 50).convert("RGB").save(path)
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_text("not a picture"), "not an image file PIL can identify"),
        (lambda p: _png_declaring(p, 100_000, 100_000), "Image size (10000000000 pixels) exceeds limit"),
        (lambda p: _png_declaring(p, 15_000, 15_000), "Image size (225000000 pixels) exceeds limit"),
        (_truncated_png, ""),
    ],
    ids=["text", "bomb-error", "bomb-warning", "truncated"],
)
def test_unreadable_image_in_a_folder(capsys, tmp_path, make, reason):
    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    path = folder / "cat" / "x.png"
    make(path)
    line = _err(capsys, tmp_path, "--data.source", "ImageFolder", "--data.source.folder", str(folder), "--trainer.max_steps", "1")
    assert line.startswith(f"leakage: error: cannot read image {path}: {reason}")


def test_image_folder_that_is_a_file(capsys, tmp_path):
    path = tmp_path / "images.png"
    path.write_text("x")
    line = _err(capsys, tmp_path, "--data.source", "ImageFolder", "--data.source.folder", str(path))
    assert line == f"leakage: error: image folder {path} is a file, not a folder"


def test_failed_download(tmp_path):
    """torchvision's real download, through a proxy that refuses every connection (as offline)."""
    root = tmp_path / "datasets"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    env.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", PYTHONPATH=str(REPO),
               OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "leakage.cli", *cli_args(tmp_path / "logs", "--data.source", "Torchvision",
                                                         "--data.source.download", "true", "--data.source.root", str(root),
                                                         "--trainer.max_steps", "1")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("leakage: error:")]
    assert len(lines) == 1 and lines[0] == proc.stderr.strip().splitlines()[-1]
    assert lines[0].startswith(f"leakage: error: downloading cifar10 into {str(root)!r} failed (")
    assert lines[0].endswith("); check the internet connection, or fetch the dataset elsewhere and pass "
                             "--data.source.root to where it is (without --data.source.download)")
    assert run_dirs(tmp_path / "logs") == []
    assert not any(p.is_file() for p in root.rglob("*"))


# --------------------------------------------------------------------------- gradient files
GRAD_ARGS = ("--data.source", "CapturedGradients", "--data.source.dataset", "mnist", "--model.model", "lenet", "--trainer.max_steps", "1")


@pytest.fixture(scope="module")
def mnist_grads():
    model = build_model("lenet", (1, 28, 28), 10)
    x = torch.rand(2, 1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return client_gradients(model, x, torch.tensor([[1], [2]]))


def _grad_err(capsys, tmp_path, path):
    return _err(capsys, tmp_path, *GRAD_ARGS, "--data.source.gradient_file", str(path))


def test_gradient_file_with_wrong_shape(capsys, tmp_path, mnist_grads):
    grads = dict(mnist_grads, **{"fc.weight": torch.zeros(2, 10, 100)})
    path = tmp_path / "g.safetensors"
    save_gradients(grads, path)
    line = _grad_err(capsys, tmp_path, path)
    assert line == (
        f"leakage: error: gradient file {path}: 'fc.weight' has shape (2, 10, 100), "
        "the model needs (10, 588) (or [V, *(10, 588)])"
    )


def test_gradient_file_with_missing_key(capsys, tmp_path, mnist_grads):
    grads = {k: v for k, v in mnist_grads.items() if k != "body.2.bias"}
    path = tmp_path / "g.safetensors"
    save_gradients(grads, path)
    line = _grad_err(capsys, tmp_path, path)
    assert line == f"leakage: error: gradient file {path} does not fit the model: missing ['body.2.bias'], unexpected nothing"


def test_gradient_file_with_nan(capsys, tmp_path, mnist_grads):
    grads = {k: v.clone() for k, v in mnist_grads.items()}
    grads["fc.bias"][0, 3] = float("nan")
    path = tmp_path / "g.pt"
    save_gradients(grads, path)
    line = _grad_err(capsys, tmp_path, path)
    assert line == f"leakage: error: gradient file {path}: 'fc.bias' holds NaN or infinite values"


def test_gradient_file_for_another_model(capsys, tmp_path, mnist_grads):
    path = tmp_path / "g.safetensors"
    save_gradients(mnist_grads, path)
    line = _err(capsys, tmp_path, *GRAD_ARGS[:-2], "--model.model", "mlp", "--trainer.max_steps", "1",
                "--data.source.gradient_file", str(path))
    assert line.startswith(f"leakage: error: gradient file {path} does not fit the model: missing ['net.1.weight'")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_corrupted_gradient_file(capsys, tmp_path, suffix):
    path = tmp_path / f"g{suffix}"
    path.write_bytes(b"\x89garbage" + os.urandom(200))
    line = _grad_err(capsys, tmp_path, path)
    assert line.startswith(f"leakage: error: cannot read gradient file {path}: ")


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_arbitrary_object_is_refused(capsys, tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "g.pt"
    with open(path, "wb") as f:
        pickle.dump({"fc.bias": _Payload(marker)}, f)
    line = _grad_err(capsys, tmp_path, path)
    assert line.startswith(f"leakage: error: gradient file {path} was refused: unpickling it could run code")
    assert "weights_only" not in line
    assert not marker.exists()


def test_missing_gradient_file(capsys, tmp_path):
    path = tmp_path / "nowhere.safetensors"
    line = _grad_err(capsys, tmp_path, path)
    assert line == f"leakage: error: gradient file not found: {path}"


def test_gradient_file_that_is_a_directory(capsys, tmp_path):
    folder = tmp_path / "captured"
    folder.mkdir()
    line = _grad_err(capsys, tmp_path, f"{folder}/")
    assert line == f"leakage: error: gradient file {folder} is a directory, not a file"


def test_model_weights_that_are_a_directory(capsys, tmp_path):
    line = _err(capsys, tmp_path, "--model.model_weights", str(tmp_path))
    assert line == f"leakage: error: model weights file {tmp_path} is a directory, not a file"


# ----------------------------------------------------------------------------- model weights
def test_model_weights_that_do_not_fit(capsys, tmp_path):
    path = tmp_path / "mlp.pt"
    torch.save(build_model("mlp", (3, 32, 32), 10).state_dict(), path)
    line = _err(capsys, tmp_path, "--model.model_weights", str(path))
    assert line.startswith(f"leakage: error: weights file {path} does not fit model 'lenet': ")
    assert "Missing key(s) in state_dict" in line


def test_model_weights_for_other_input_size(capsys, tmp_path):
    path = tmp_path / "lenet_mnist.pt"
    torch.save(build_model("lenet", (1, 28, 28), 10).state_dict(), path)
    line = _err(capsys, tmp_path, "--model.model_weights", str(path))  # cifar10 by default
    assert line.startswith(f"leakage: error: weights file {path} does not fit model 'lenet': ")
    assert "size mismatch" in line


def test_missing_model_weights(capsys, tmp_path):
    path = tmp_path / "none.pt"
    line = _err(capsys, tmp_path, "--model.model_weights", str(path))
    assert line == f"leakage: error: model weights file not found: {path}"


# ------------------------------------------------------------- settings checked before the run (issue 22)
_MLP = ("--data.source.dataset", "mnist", "--model.model", "mlp", "--trainer.max_steps", "1")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model.optimizer.lr", "1e39"], "model.optimizer.lr must fit in float32 (|model.optimizer.lr| <= 3.403e+38), got 1e+39"),
        (["--model.objective.tv_weight=-1e39"], "model.objective.tv_weight must fit in float32 (|model.objective.tv_weight| <= 3.403e+38), got -1e+39"),
        (["--model.optimizer.history_size", "0"], "history_size must be >= 1, got 0"),
        (["--model.optimizer.max_iter", "0"], "max_iter must be >= 1, got 0"),
        (["--model.model_seed", "18446744073709551616"],
         "model.model_seed must be an integer in [0, 2**63), got 18446744073709551616"),
        (["--model.dummies.init_seed", "-1"], "model.dummies.init_seed must be an integer in [0, 2**63), got -1"),
        (["--trainer.callbacks+=leakage.federated.defenses.SecureAggregation", "--trainer.callbacks.clients", "2",
          "--trainer.callbacks.seed", "18446744073709551616"],
         "trainer.callbacks[0].seed must be an integer in [0, 2**63), got 18446744073709551616"),
        (["--report.success_ssim", "-1"], "success_ssim must be in [0, 1], got -1.0"),
        (["--report.success_ssim", "2.0"], "success_ssim must be in [0, 1], got 2.0"),
    ],
)
def test_out_of_range_settings_fail_before_the_run(capsys, tmp_path, args, expected):
    assert _err(capsys, tmp_path, *_MLP, *args) == f"leakage: error: {expected}"


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true", "16-true", "16", "bf16"])
def test_reduced_precision_is_refused(capsys, tmp_path, precision):
    line = _err(capsys, tmp_path, *_MLP, "--trainer.precision", precision)
    assert line == (f"leakage: error: precision {precision} is not supported: gradient matching needs full float32 "
                    "(its second-order objective amplifies every rounding error, and reduced precision fails "
                    "silently); use --trainer.precision 32 (the default) or 64")


def test_secure_aggregation_takes_any_seed_in_range():
    from leakage.federated.defenses import pairwise_masks

    masks = pairwise_masks(3, {"w": torch.Size([4])}, seed=2**63 - 1, scale=1.0)  # overflowed int64 before
    assert torch.allclose(sum(m["w"] for m in masks), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert not torch.equal(masks[0]["w"], pairwise_masks(3, {"w": torch.Size([4])}, seed=0, scale=1.0)[0]["w"])


@pytest.mark.skipif(__import__("importlib").util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_logger_whose_package_is_not_installed(capsys, tmp_path):
    line = _err(capsys, tmp_path, *_MLP, "--trainer.logger", "WandbLogger")
    assert line == ("leakage: error: lightning.pytorch.loggers.WandbLogger needs the package wandb, which is not "
                    "installed (pip install wandb)")


def test_model_weights_download_that_fails(capsys, tmp_path, monkeypatch):
    import torch.hub
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached weights
    monkeypatch.setattr(torch.hub, "urlopen", offline)  # this machine offline, wherever the test runs
    line = _err(capsys, tmp_path, "--model.model", "torchvision.models.resnet18",
                "--model.model.weights", "IMAGENET1K_V1", "--trainer.max_steps", "1")
    assert line == ("leakage: error: cannot build torchvision.models.resnet18: downloading its weights failed "
                    "([Errno -2] Name or service not known); without internet, leave the weights setting out and "
                    "give the weights as a file with --model.model_weights PATH (.pth, .ckpt or .safetensors)")


# ------------------------------------------------------------- what a config may import (issue 22)
_MARKER_MODULE = '''
from pathlib import Path
Path(__file__).with_name("MARKER").write_text("imported")
from lightning.pytorch.callbacks import Callback
class Marker(Callback):
    pass
class NotACallback:
    pass
'''


@pytest.mark.parametrize(
    "form, key",
    [
        ("config", "trainer.callbacks[0].class_path"),
        ("sub-config", "trainer.callbacks.class_path"),
        ("callbacks", "trainer.callbacks"),
        ("callbacks list", "trainer.callbacks[0]"),
        ("logger", "trainer.logger"),
        ("strategy", "trainer.strategy"),
    ],
)
def test_trainer_class_path_of_a_user_module_is_refused_before_import(capsys, tmp_path, monkeypatch, form, key):
    module = f"usermarker_{abs(hash(form))}"  # a fresh name: never imported before in this process
    (tmp_path / f"{module}.py").write_text(_MARKER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "fit.yaml"
    config.write_text(f"trainer:\n  callbacks:\n    - class_path: {module}.NotACallback\n")
    sub = tmp_path / "callback.yaml"
    sub.write_text(f"class_path: {module}.Marker\n")
    args = {
        "config": ["--config", str(config)],
        "sub-config": [f"--trainer.callbacks+={sub}"],
        "callbacks": ["--trainer.callbacks", f"{module}.Marker"],
        "callbacks list": ["--trainer.callbacks", f"[{module}.Marker]"],
        "logger": [f"--trainer.logger={module}.Marker"],
        "strategy": ["--trainer.strategy", f"{module}.Marker"],
    }[form]
    line = _err(capsys, tmp_path, *_MLP, *args)
    assert line.startswith(f"leakage: error: {key}: '{module}.")
    assert "is not a class of the package, Lightning or torch: trainer class paths (callbacks, logger, strategy, " \
           "...) must be under leakage., lightning., pytorch_lightning., torch. (only --model.model imports user code" \
           in line
    assert not (tmp_path / "MARKER").exists()  # its import-time code never ran
    assert module not in sys.modules


def test_trainer_class_paths_of_the_package_and_lightning_still_work(capsys, tmp_path):
    from conftest import cli_args

    main(cli_args(tmp_path / "logs", *_MLP, "--trainer.callbacks+=leakage.federated.defenses.TopK",
                  "--trainer.callbacks.keep_ratio", "0.5", "--trainer.callbacks+=EarlyStopping",
                  "--trainer.callbacks.monitor", "attack/loss", "--trainer.callbacks.check_on_train_epoch_end", "true",
                  "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
                  "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")))
    assert "run folder:" in capsys.readouterr().out
