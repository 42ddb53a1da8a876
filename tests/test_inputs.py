"""Input files as users have them (issue 22): image depths, folder layouts, files that are not
regular files, captured updates and their metadata, settings a source ignores, refused pickles."""

from __future__ import annotations

import os
import pickle
import signal
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from leakage.attacks.settings import LBFGS
from leakage.federated.capture import save_capture
from leakage.federated.client import client_gradients, load_gradients, save_gradients
from leakage.data.datamodule import VictimDataModule, read_labelled_folder
from leakage.records import Observation
from leakage.engine.models import build_model, load_weights

from conftest import cli_args, cli_error, quiet_trainer, run_dirs
from leakage.data.sources import Bundled, CapturedGradients, ImageFolder

RAMP16 = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))  # 0 ... 65535 along x


def _write_png16(path, samples):
    """A 16-bit PNG (grey ``[H, W]``, RGB ``[H, W, 3]`` or RGBA ``[H, W, 4]``), written by hand: PIL
    writes 16-bit grey PNGs only."""
    a = np.asarray(samples, dtype=">u2")
    colour = 0 if a.ndim == 2 else {3: 2, 4: 6}[a.shape[2]]
    rows = b"".join(b"\0" + a[r].tobytes() for r in range(a.shape[0]))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", a.shape[1], a.shape[0], 16, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def _one(path, channels=1, size=None):
    images, _ = read_labelled_folder(path.parent, channels, size)
    return images[0]


# ----------------------------------------------------------------------------- depth and range
def test_a_16_bit_png_ramp_reads_as_the_8_bit_one(tmp_path):
    for sub in "ab":
        (tmp_path / sub).mkdir()
    Image.fromarray(RAMP16).save(tmp_path / "a" / "ramp_0.png")  # PIL's I;16
    Image.fromarray((RAMP16 // 257).astype(np.uint8)).save(tmp_path / "b" / "ramp_0.png")
    x16, x8 = _one(tmp_path / "a" / "ramp_0.png"), _one(tmp_path / "b" / "ramp_0.png")
    assert float(x16.mean()) == pytest.approx(0.5, abs=1e-6)  # it was 0.969, white from column 8 on
    torch.testing.assert_close(x16[0], torch.from_numpy(RAMP16 / 65535.0).float())
    torch.testing.assert_close(x16, x8, atol=1 / 255, rtol=0)


def test_16_bit_rgb_and_rgba_pngs_keep_their_16_bits(tmp_path):
    rgb = np.stack([RAMP16, RAMP16[:, ::-1], np.full_like(RAMP16, 1000)], -1)
    _write_png16(tmp_path / "rgb_1.png", rgb)
    x = _one(tmp_path / "rgb_1.png", channels=3)
    torch.testing.assert_close(x, torch.from_numpy(rgb / 65535.0).float().permute(2, 0, 1))
    assert float(x[2].mean()) == pytest.approx(1000 / 65535, abs=1e-7)  # below one 8-bit step: 16 bits read
    (tmp_path / "a").mkdir()
    _write_png16(tmp_path / "a" / "rgba_1.png", np.stack([RAMP16] * 3 + [np.zeros_like(RAMP16)], -1))
    grey = _one(tmp_path / "a" / "rgba_1.png", channels=1, size=(16, 16))  # alpha dropped, resized
    assert grey.shape == (1, 16, 16) and float(grey.mean()) == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16_bit_tiffs(tmp_path, mode):
    img = Image.fromarray(RAMP16) if mode == "I;16" else Image.frombytes("I;16B", (32, 32), RAMP16.astype(">u2").tobytes())
    img.save(tmp_path / "t_0.tif")
    assert Image.open(tmp_path / "t_0.tif").mode == mode
    torch.testing.assert_close(_one(tmp_path / "t_0.tif")[0], torch.from_numpy(RAMP16 / 65535.0).float())


def test_float_and_32_bit_integer_tiffs(tmp_path):
    ramp = (RAMP16 / 65535.0).astype(np.float32)
    Image.fromarray(ramp, mode="F").save(tmp_path / "f_0.tif")
    torch.testing.assert_close(_one(tmp_path / "f_0.tif")[0], torch.from_numpy(ramp))  # it loaded black
    (tmp_path / "i").mkdir()
    Image.fromarray((RAMP16.astype(np.int64) * 32768).astype(np.int32)).save(tmp_path / "i" / "i_0.tif")
    x = _one(tmp_path / "i" / "i_0.tif", channels=3)
    assert x.shape == (3, 32, 32) and float(x.max()) == pytest.approx(65535 * 32768 / (2**31 - 1))


@pytest.mark.parametrize("values, shown", [(2.0, "from 0 to 2,"), (-0.5, "from -0.5 to -0,")])
def test_float_images_outside_0_1_are_refused(tmp_path, values, shown):
    ramp = (RAMP16 / 65535.0 * values).astype(np.float32)
    Image.fromarray(ramp, mode="F").save(tmp_path / "f_0.tif")
    with pytest.raises(ValueError) as exc:
        read_labelled_folder(tmp_path, 1, None)
    msg = str(exc.value)
    assert msg.startswith(f"image {tmp_path / 'f_0.tif'} holds float values {shown} outside [0, 1]")
    assert "\n" not in msg


# ----------------------------------------------------------------------------- folder layout
def _png(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)


def test_hidden_entries_are_ignored(tmp_path):
    _png(tmp_path / "cat" / "a.png")
    _png(tmp_path / "dog" / "b.png")
    (tmp_path / ".ipynb_checkpoints").mkdir()  # it shifted every label by one
    _png(tmp_path / "cat" / ".a-checkpoint.png")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    images, labels = read_labelled_folder(tmp_path, 1, None)
    assert labels == [0, 1] and len(images) == 2


def test_flat_files_beside_a_class_folder_are_refused(tmp_path):
    _png(tmp_path / "x_1.png")
    _png(tmp_path / "y_2.png")
    _png(tmp_path / "cat" / "a.png")  # the flat files were ignored
    with pytest.raises(ValueError, match=r"mixes class sub-folders \(cat/, \.\.\.\) and image files \(x_1\.png"):
        read_labelled_folder(tmp_path, 1, None)


def test_a_class_folder_without_images_is_refused(tmp_path):
    _png(tmp_path / "cat" / "a.png")
    (tmp_path / "cow").mkdir()
    _png(tmp_path / "dog" / "b.png")
    with pytest.raises(ValueError, match="class folder .*cow holds no images"):
        read_labelled_folder(tmp_path, 1, None)


@pytest.fixture
def alarm():
    """Fail instead of hanging, should anything open a FIFO."""
    def hung(*_):
        raise TimeoutError("the read hung")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _odd(path, kind):
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        os.symlink(path.name, path)
    elif kind == "dev_zero":
        os.symlink("/dev/zero", path)
    else:
        os.symlink(path.parent / "gone", path)


ODD = [("fifo", "is a FIFO (named pipe), not a regular file"), ("loop", "is a symbolic link loop"),
       ("dev_zero", "(a link to /dev/zero) is a character device"), ("broken", "is a broken symbolic link")]


@pytest.mark.parametrize("kind, said", ODD)
def test_an_image_that_is_not_a_regular_file_is_refused_unopened(tmp_path, alarm, kind, said):
    _png(tmp_path / "a_1.png")
    _odd(tmp_path / "b_2.png", kind)
    with pytest.raises((ValueError, FileNotFoundError)) as exc:
        read_labelled_folder(tmp_path, 1, None)
    assert str(exc.value).startswith(f"image {tmp_path / 'b_2.png'} ") and said in str(exc.value)


@pytest.mark.parametrize("kind, said", ODD)
def test_a_gradient_or_weights_file_that_is_not_a_regular_file(capsys, tmp_path, alarm, kind, said):
    path = tmp_path / "g.pt"
    _odd(path, kind)
    line = cli_error(capsys, cli_args(tmp_path / "logs", "--data.source", "CapturedGradients", "--data.source.dataset", "mnist",
                                      "--data.source.gradient_file", str(path), "--trainer.max_steps", "1"))
    assert line.startswith(f"leakage: error: gradient file {path} ") and said in line  # was "file not found"
    with pytest.raises((ValueError, FileNotFoundError), match=f"model weights file {path} .*{said[-20:]}"):
        load_weights(build_model("lenet", (1, 28, 28), 10), path)


# ----------------------------------------------------------------------------- captured updates
@pytest.fixture
def update(lenet_mnist):
    x = torch.rand(1, 1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return {k: v[0] for k, v in client_gradients(lenet_mnist, x, torch.tensor([[3]])).items()}


GRAD = ("--data.source", "CapturedGradients", "--data.source.dataset", "mnist", "--model.model", "lenet", "--model.labels", "idlg",
        "--trainer.max_steps", "1", "--data.source.gradient_file")


def _capture_error(capsys, tmp_path, update, model, **kw):
    path = save_capture(tmp_path / "c.safetensors", update, model.state_dict(), **kw)
    line = cli_error(capsys, cli_args(tmp_path / "logs", *GRAD, str(path)))
    assert run_dirs(tmp_path / "logs") == []
    return line, path


def test_capture_with_num_examples_0_gives_no_advice_the_cli_refuses(capsys, tmp_path, update, lenet_mnist):
    line, path = _capture_error(capsys, tmp_path, update, lenet_mnist, num_examples=0, share="pseudo_gradient")
    assert line == (f"leakage: error: capture file {path}: bad metadata: num_examples 0 (a client's update comes "
                    "from at least one example)")


def test_capture_metadata_that_its_settings_cannot_have_made(capsys, tmp_path, update, lenet_mnist):
    line, path = _capture_error(capsys, tmp_path, update, lenet_mnist, num_examples=3,
                                settings={"local_steps": 2, "local_batch_size": 2, "local_lr": 0.1})
    assert line.startswith(f"leakage: error: capture file {path}: bad metadata (num_examples 3): local_batch_size 2 "
                           "does not divide")


def test_capture_update_shaped_unlike_its_global_weight(capsys, tmp_path, update, lenet_mnist):
    line, path = _capture_error(capsys, tmp_path, dict(update, **{"fc.bias": torch.tensor(0.5)}), lenet_mnist,
                                num_examples=1, share="pseudo_gradient")  # a 0-dimensional tensor
    assert line == f"leakage: error: capture file {path}: update 'fc.bias' has shape (), its global weight (10,)"


def test_an_all_zero_capture_carries_nothing_to_invert(capsys, tmp_path, update, lenet_mnist):
    zero = {k: torch.zeros_like(v) for k, v in update.items()}
    line, path = _capture_error(capsys, tmp_path, zero, lenet_mnist, num_examples=1, share="pseudo_gradient")
    assert line == (f"leakage: error: gradient file {path}: the shared update is all zero: a zero update carries "
                    "nothing to invert")


def test_some_zero_updates_among_several_are_refused_by_position(update):
    grads = {k: torch.stack([v, torch.zeros_like(v), v, torch.zeros_like(v)]) for k, v in update.items()}
    with pytest.raises(ValueError, match=r"^updates 1, 3 \(of 4, by position\) are all zero: a zero update carries "
                                         "nothing to invert; leave those victims out$"):
        Observation(grads, 1, (1, 28, 28), 10)


def test_the_python_api_refuses_an_all_zero_update(lenet_mnist, update):
    from leakage import invert

    with pytest.raises(ValueError, match="the shared update is all zero"):
        invert(lenet_mnist, {k: torch.zeros_like(v) for k, v in update.items()}, (1, 28, 28), 10, steps=1)


class ScalarNet(nn.Module):
    """A model with a 0-dimensional parameter (a learned temperature)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)
        self.temperature = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return self.fc(x.flatten(1)) * self.temperature


def test_a_model_with_a_scalar_parameter_is_attacked_from_its_file(tmp_path):
    """Its gradient file holds a 0-dimensional tensor: the attack and every defense take it."""
    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.reporting.callbacks import LeakageReport
    from leakage.federated.defenses import GaussianNoise, NormClip, TopK

    model = ScalarNet()
    x = torch.rand(2, 1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    grads = client_gradients(model, x, torch.tensor([[1], [2]]))
    path = tmp_path / "g.safetensors"
    save_gradients({k: v[0] for k, v in grads.items()}, path)  # one update: 'temperature' is 0-dimensional
    assert load_gradients(path, model)["temperature"].shape == (1,)
    dm = VictimDataModule(CapturedGradients(dataset="mnist", gradient_file=str(path)))
    module = GradientInversion(model=model, input_shape=(1, 28, 28), num_classes=10, labels="idlg", optimizer=LBFGS(max_iter=2))
    report = LeakageReport(save_artifacts=False)
    defenses = [NormClip(1.0), TopK(0.5), GaussianNoise(0.01, relative=True)]
    quiet_trainer(2, [*defenses, report], root=tmp_path).fit(module, datamodule=dm)
    assert [r["status"] for r in report.rows] == ["ok"] and report.rows[0]["recovered_labels"] == [1]


# ----------------------------------------------------------------------------- settings a source ignores
@pytest.mark.parametrize("kwargs, flag", [
    (dict(indices=[0]), "--data.indices"),
    (dict(num_victims=3), "--data.num_victims"),
])
def test_a_victim_count_is_refused_for_captured_gradients(kwargs, flag):
    with pytest.raises(ValueError, match=f"^CapturedGradients does not use {flag}: every update in the gradient file"):
        VictimDataModule(CapturedGradients("g.safetensors"), **kwargs)


@pytest.mark.parametrize("make, setting", [
    (lambda: Bundled(gradient_file="g.safetensors"), "gradient_file"),
    (lambda: Bundled(folder="my_images"), "folder"),
    (lambda: ImageFolder("my_images", root="/datasets"), "root"),
    (lambda: CapturedGradients("g.safetensors", download=True), "download"),
])
def test_a_setting_the_source_does_not_read_cannot_be_given(make, setting):
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{setting}'"):
        make()


def test_cli_refuses_victim_counts_for_a_gradient_file(capsys, tmp_path, update):
    path = tmp_path / "g.safetensors"
    save_gradients(update, path)
    line = cli_error(capsys, cli_args(tmp_path / "logs", *GRAD, str(path), "--data.num_victims", "5"))
    assert line == ("leakage: error: CapturedGradients does not use --data.num_victims: every update in the "
                    "gradient file is a victim; there are no images to pick or count")
    line = cli_error(capsys, cli_args(tmp_path / "logs", *GRAD, str(path), "--data.source.root", "data"))
    assert line == "leakage: error: data.source: leakage.data.sources.CapturedGradients: no option 'root'"


# ----------------------------------------------------------------------------- refused pickles
class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("what", ["gradient file", "model weights file"])
def test_a_refused_pickle_says_why_and_how_to_save_a_safe_file(tmp_path, lenet_mnist, what):
    marker, path = tmp_path / "pwned", tmp_path / "file.pt"
    torch.save({"fc.bias": _Payload(marker)}, path)
    with pytest.raises(ValueError) as exc:
        load_gradients(path, lenet_mnist) if what == "gradient file" else load_weights(lenet_mnist, path)
    msg = str(exc.value)
    assert msg == (f"{what} {path} was refused: unpickling it could run code (it holds "
                   "io.open, not only tensors); save a .safetensors file (safetensors.torch.save_file) "
                   "or a plain state_dict of tensors (torch.save(model.state_dict(), path))")
    assert "weights_only" not in msg and not marker.exists()
    with open(path, "wb") as f:  # a plain pickle, not torch.save's format
        pickle.dump({"fc.bias": _Payload(marker)}, f)
    with pytest.raises(ValueError, match="unpickling it could run code .it is a pickle, not a torch.save file."):
        load_gradients(path, lenet_mnist)
    assert not marker.exists()


def test_negative_integer_images_are_refused(tmp_path):
    Image.fromarray(RAMP16.astype(np.int32) - 30000).save(tmp_path / "s_0.tif")  # 32-bit signed
    with pytest.raises(ValueError, match=r"holds negative int32 values \(down to -30000\): images need values >= 0"):
        read_labelled_folder(tmp_path, 1, None)


def test_garbage_is_not_called_a_pickle_nor_advised_weights_only_false(tmp_path, lenet_mnist):
    path = tmp_path / "g.pt"
    path.write_bytes(b"\x89garbage" + bytes(range(200)))
    with pytest.raises(ValueError) as exc:
        load_gradients(path, lenet_mnist)
    assert str(exc.value) == f"cannot read gradient file {path}: not a torch.save file (corrupted, or another format)"


def test_read_capture_refuses_a_fifo_unopened(tmp_path, alarm):
    from leakage.federated.capture import read_capture

    os.mkfifo(tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match=r"capture file .*c\.safetensors is a FIFO \(named pipe\)"):
        read_capture(tmp_path / "c.safetensors")
