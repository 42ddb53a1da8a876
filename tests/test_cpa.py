"""The Cocktail Party Attack: ICA recovers most images of a 16-image MNIST batch from the mlp's first
layer, through the CLI, scored after the metrics' Hungarian matching; refusals in one line."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import leakage
from leakage.attacks.cpa import CocktailPartyAttack
from leakage.engine.metrics import reconstruction_metrics, ssim_per_image

from conftest import CONFIGS, fit_in_process, cli_args, cli_error, run_dirs

SHAPE = (1, 28, 28)



def test_the_cli_recovers_most_of_a_16_image_mnist_batch_matched_to_the_true_images(tmp_path):
    cli = fit_in_process(tmp_path, "mnist_cpa.yaml")
    assert isinstance(cli.model, CocktailPartyAttack) and cli.trainer.global_step == 1
    recon, truth = cli.model.dummy_data.detach(), cli.datamodule.secret.images  # [1, 16, 1, 28, 28]
    metrics = reconstruction_metrics(recon, truth)
    assert int((metrics["ssim_images"][0] >= 0.9).sum()) >= 13  # 15/16 measured
    # the slots come in ICA's order: only the metrics' Hungarian matching pairs them with the images
    in_ica_order = ssim_per_image(recon[0].clamp(0, 1), truth[0])
    assert float(in_ica_order.mean()) < 0.5 < 0.9 < float(metrics["ssim"][0])
    assert not torch.equal(metrics["perm"][0], torch.arange(16))
    run, = run_dirs(tmp_path)
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["label_acc"] == 1.0 and summary["exact"] == 0  # bias_count's labels; never exact
    assert "attack: Cocktail Party Attack: ICA on the first layer's gradient (closed form)" in cli.stdout
    assert "images reconstructed (SSIM >= 0.9): 1" in cli.stdout


class _Narrow(nn.Module):
    """A user's MLP whose first linear layer has 8 units."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 8), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_a_model_without_a_linear_first_layer_or_too_few_units_is_refused_in_one_line(capsys, tmp_path):
    line = cli_error(capsys, cli_args(tmp_path, "--config", str(CONFIGS / "mnist_cpa.yaml"), "--model.model", "lenet"))
    assert line.startswith("leakage: error: the Cocktail Party Attack needs a fully connected first layer")
    assert "'body.0' (Conv2d)" in line and not run_dirs(tmp_path)
    x, y = leakage.bundled_images("mnist", range(16))
    narrow = _Narrow()
    with pytest.raises(ValueError, match=r"at most as many records as its first layer 'fc1' has 8 units, "
                                         r"the batch has 16"):
        leakage.invert(narrow, leakage.client_update(narrow, x, y), SHAPE, 10, attack="cpa", batch_size=16)


def test_a_first_layer_that_passes_no_gradient_is_a_failed_result_with_its_reason():
    """No unit of the first layer fires (bias -1000): its gradient is zero, there is nothing to unmix; the
    victim is marked failed and a note says why, instead of SciPy's 'array must not contain infs or NaNs'."""
    from torch import nn

    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(784, 32), nn.Linear(32, 10)
            with torch.no_grad():
                self.fc1.bias.fill_(-1e3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    x, y = leakage.bundled_images("mnist", range(4))
    model = Dead()
    update = leakage.client_update(model, x, y)
    assert float(update["fc1.weight"].abs().max()) == 0.0
    result = leakage.invert(model, update, (1, 28, 28), 10, attack="cpa", batch_size=4)
    assert result.failed.tolist() == [True] and result.exact.tolist() == [False]
    assert result.module.notes == ["victim 0 failed: the Cocktail Party Attack needs the gradient of the first layer "
                                   "'fc1' to mix 4 records, and it is zero (no unit of the layer passed a gradient)"]
