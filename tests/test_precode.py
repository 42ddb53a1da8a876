"""PRECODE (leakage.engine.precode) and the adaptive attack that breaks it (leakage.attacks.bottleneck): the
client's noise is its own in every update (under vmap too), yet the bottleneck's encoder gives the
representation exactly; the honest attack fails on a PRECODE model, the bottleneck inversion recovers the
image (and is never reported exact), in ``leakage fit`` too; bad settings are one-line errors."""

from __future__ import annotations

import pytest
import torch

import leakage
from leakage.attacks.bottleneck import BottleneckInversion
from leakage.engine.metrics import ssim_per_image
from leakage.engine.models import build_model
from leakage.engine.precode import VariationalBottleneck

from conftest import cli_args, cli_error, fit_in_process

SHAPE = (1, 28, 28)


def test_the_noise_is_the_client_s_own_per_update_and_the_encoder_still_gives_the_representation():
    x, y = leakage.bundled_images("mnist", [0])
    model = build_model("lenet_precode", SHAPE, 10, seed=1234)
    torch.manual_seed(0)
    twice = leakage.client_update(model, x[None].expand(2, 1, *SHAPE), y[None].expand(2, 1))  # one vmap call
    again = leakage.client_update(model, x, y)
    for a, b in ((twice["fc.weight"][0], twice["fc.weight"][1]), (twice["fc.weight"][0], again["fc.weight"])):
        assert (a - b).norm() > 0.1 * a.norm()  # a fresh draw of eps in every update
    dW, db = again["bottleneck.encoder.weight"], again["bottleneck.encoder.bias"]
    r = db @ dW / db.square().sum()
    true = model.body(x)[0]
    assert (r - true).norm() <= 1e-5 * true.norm()  # noise or not, dW_i / db_i is the representation


def test_precode_stops_the_honest_attack_and_falls_to_the_adaptive_one():
    x, y = leakage.bundled_images("mnist", [2])
    model = build_model("lenet_precode", SHAPE, 10, seed=1234)
    torch.manual_seed(0)
    update = leakage.client_update(model, x, y)
    honest = leakage.invert(model, update, input_shape=SHAPE, num_classes=10, batch_size=1, attack="fast", steps=20)
    adaptive = leakage.invert(model, update, input_shape=SHAPE, num_classes=10, batch_size=1, attack="bottleneck",
                              iterations=100)
    ssim = {who: float(ssim_per_image(r.images[:, 0].clamp(0, 1), x)) for who, r in (("honest", honest),
                                                                                    ("adaptive", adaptive))}
    # measured: -0.0001 (0.002 at 100 steps) and 0.978 (0.863 at 50 iterations)
    assert ssim["honest"] < 0.3 and ssim["adaptive"] >= 0.9, ssim
    assert adaptive.labels.tolist() == [[int(y)]] and not bool(adaptive.exact.any())  # the noise proves nothing


def test_an_encoder_fed_the_input_gives_the_input_itself():
    x, y = leakage.bundled_images("mnist", [0])
    model = build_model("mlp_precode", SHAPE, 10, seed=1234)
    update = leakage.client_update(model, x, y)
    result = leakage.invert(model, update, input_shape=SHAPE, num_classes=10, batch_size=1, attack="bottleneck")
    assert (result.images[0, 0] - x[0]).abs().max() < 1e-4 and not bool(result.exact.any())


def test_leakage_fit_runs_the_adaptive_config(tmp_path):
    cli = fit_in_process(tmp_path, "mnist_precode_adaptive.yaml", "--data.num_victims", "1", "--model.iterations", "60")
    recon = cli.model.reconstruction().detach().cpu()
    assert float(ssim_per_image(recon[0].clamp(0, 1), cli.datamodule.secret.images[0])) >= 0.5
    assert "the representation read exactly (rank one) for 1 of 1 updates" in cli.stdout


def test_bad_bottleneck_settings_are_one_line_errors(capsys, tmp_path):
    for kwargs, message in (({"iterations": 0}, "iterations must be an integer >= 1"),
                            ({"labels": "joint"}, "unknown label strategy 'joint'"),
                            ({"min_relative_bias": 1.0}, "min_relative_bias must be in \\[0, 1\\)"),
                            ({"model": "lenet"}, "needs a PRECODE model"),
                            ({"layer": "body"}, "bottleneck layer 'body' is not an nn.Linear with a bias")):
        with pytest.raises(ValueError, match=message):
            BottleneckInversion(**kwargs)
    with pytest.raises(ValueError, match="bottleneck size must be a positive integer"):
        VariationalBottleneck(10, 0)
    line = cli_error(capsys, cli_args(tmp_path, "--config", "configs/mnist_precode_adaptive.yaml",
                                      "--model.iterations", "0"))
    assert "iterations must be an integer >= 1" in line
