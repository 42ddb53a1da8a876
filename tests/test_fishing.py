"""Class fishing (leakage.federated.server.FishingServer, leakage.attacks.fishing): the server isolates the one
image of its target class in a batch of 8 MNIST images, the attack inverts it where the honest attack on the
same batch does not, a small multiplier lets the other images leak in, and bad settings are one-line errors."""

from __future__ import annotations

import pytest
import torch

import leakage
from leakage.attacks.fishing import FishingAttack
from leakage.engine.metrics import ssim_per_image
from leakage.engine.models import build_model
from leakage.federated.server import FishingServer

from conftest import cli_args, cli_error, fit_in_process, run_dirs

SHAPE = (1, 28, 28)
TARGET = 2  # the bundled MNIST test images 0-7 are labelled 7 2 1 0 4 1 4 9: one image of class 2 (index 1)


def _fished_ssim(images: torch.Tensor, truth: torch.Tensor) -> float:
    """The best SSIM of any slot of ``images`` ``[B, ...]`` to the image of class 2, ``truth``."""
    return float(ssim_per_image(images.clamp(0, 1), truth.expand_as(images)).max())


def _fish(multiplier: float, x: torch.Tensor, y: torch.Tensor, steps: int = 100):
    server = FishingServer(target_class=TARGET, multiplier=multiplier)
    sent = server.send(build_model("lenet", SHAPE, 10, seed=1234), SHAPE)
    update = leakage.client_update(sent, x, y)
    return leakage.invert(sent, update, input_shape=SHAPE, num_classes=10, batch_size=len(y), attack="fishing",
                          server=server, steps=steps)


def test_the_fishing_config_recovers_the_one_image_of_class_2_in_a_batch_of_8(tmp_path):
    """configs/mnist_fishing.yaml: the fished image comes back (SSIM 0.999 measured), the labels are counted
    exactly off the bias gradient, the other 7 slots are filler and the report says so."""
    cli = fit_in_process(tmp_path, "mnist_fishing.yaml")
    secret = cli.datamodule.secret
    assert isinstance(cli.model, FishingAttack) and cli.model.dummy_data.shape[1] == 1  # a batch of one
    recon = cli.model.reconstruction().detach().cpu()
    assert recon.shape == secret.images.shape
    assert float(ssim_per_image(recon[0, :1].clamp(0, 1), secret.images[0, 1:2])) >= 0.95  # measured: 0.999
    assert sorted(cli.model.recovered_labels()[0].tolist()) == sorted(secret.labels[0].tolist())
    assert cli.model.recovered_labels()[0, 0] == TARGET
    run, = run_dirs(tmp_path)
    text = (run / "metrics.txt").read_text()
    assert text.startswith("threat model: malicious server: class fishing for class 2")
    assert "images reconstructed (SSIM >= 0.9): 1/8" in cli.stdout and "7 of 8 slots" in cli.stdout


def test_fishing_recovers_an_image_the_honest_attack_does_not_and_the_multiplier_decides():
    x, y = leakage.bundled_images("mnist", range(8))
    truth = x[1:2]
    honest_model = build_model("lenet", SHAPE, 10, seed=1234)
    honest = leakage.invert(honest_model, leakage.client_update(honest_model, x, y), input_shape=SHAPE,
                            num_classes=10, batch_size=8, attack="fast", labels="bias_count", steps=20)
    assert _fished_ssim(honest.images[0], truth) < 0.6  # measured: 0.463 (0.481 at 50, 100 and 300 steps: it stalls)
    assert _fished_ssim(_fish(1000.0, x, y).images[0], truth) >= 0.95  # measured: 0.999
    # a small bias lets every other image leak into the fished gradient: p_t of each is not ~0
    assert _fished_ssim(_fish(1.0, x, y, steps=50).images[0], truth) < 0.3  # measured: 0.016 (100 steps)


def test_a_batch_without_the_target_class_is_a_failed_result():
    x, y = leakage.bundled_images("mnist", [0, 2, 3, 4])  # labels 7 1 0 4: no image of class 2
    result = _fish(1000.0, x, y, steps=5)
    assert bool(result.failed[0])
    assert sorted(result.labels[0].tolist()) == sorted(y.tolist())  # the counted labels, no class 2 among them
    assert any("no input of class 2" in note for note in result.module.notes)


def test_bad_fishing_settings_are_one_line_errors(capsys, tmp_path):
    for kwargs, message in (({"target_class": -1}, "target_class must be a class index >= 0"),
                            ({"target_class": 1.5}, "target_class must be an integer"),
                            ({"multiplier": 0}, "multiplier must be a finite number > 0"),
                            ({"multiplier": float("nan")}, "multiplier must be a finite number > 0")):
        with pytest.raises(ValueError, match=message):
            FishingServer(**kwargs)
    with pytest.raises(ValueError, match=r"target_class 10 is not a class of the model: its classifier 'fc' gives 10"):
        FishingServer(target_class=10).send(build_model("lenet", SHAPE, 10), SHAPE)
    line = cli_error(capsys, cli_args(tmp_path, "--attack", "fishing", "--data.source.dataset", "mnist"))
    assert "the fishing attack inverts what a fishing server isolated: run it with --data.server FishingServer" in line
    line = cli_error(capsys, cli_args(tmp_path, "--config", "configs/mnist_fishing.yaml", "--data.client", "FedAvg"))
    assert "the fishing attack inverts a FedSGD update" in line
