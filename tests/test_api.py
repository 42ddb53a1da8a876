"""The Python API's bad inputs: one clear ValueError/TypeError, never a raw exception or a silent
wrong update; the client's batch checks are the CLI's too (leakage.federated.client.check_batch)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import leakage
from leakage.federated.client import client_gradients
from leakage.federated.fedavg import FedAvgClient, client_updates


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(144, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


class TupleNet(Tiny):
    """Returns (logits, features), as many classifiers do."""

    def forward(self, x):
        return self.fc(x.flatten(1)), x


SHAPE = (1, 12, 12)  # SSIM's 11x11 window fits


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Tiny()


def _x(n=2):
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(1))


def _invert(model, update, **kw):
    return leakage.invert(model, update, input_shape=SHAPE, num_classes=3, steps=1, **kw)


def test_a_model_returning_a_tuple_is_one_line():
    model = TupleNet()
    with pytest.raises(ValueError, match=r"gives tuple for one input of shape \(1, 12, 12\), not logits"):
        leakage.client_update(model, _x(), torch.tensor([0, 1]))
    update = leakage.client_update(Tiny(), _x(1), torch.tensor([0]))
    with pytest.raises(ValueError, match="gives tuple .*wrap a model"):
        _invert(model, update)


@pytest.mark.parametrize("labels, reason", [
    (torch.tensor([-100, 1]), r"class indices in \[0, 3\), got -100 .*ignore_index"),
    (torch.tensor([3, 1]), r"class indices in \[0, 3\), got 3"),
    (torch.tensor([1.9, 1.0]), "integer class indices, got torch.float32"),
    (torch.tensor([True, False]), "integer class indices, got torch.bool"),
    (torch.tensor([0, 1, 2]), r"x of shape \(1, 2, 1, 12, 12\) and labels of shape \(1, 3\) do not fit"),
])
def test_labels_the_update_would_silently_get_wrong_are_refused_by_both_doors(model, labels, reason):
    with pytest.raises(ValueError, match=reason):  # the Python API
        leakage.client_update(model, _x(), labels)
    with pytest.raises(ValueError, match=reason):  # the FedAvg client
        leakage.client_update(model, _x(), labels, fedavg=FedAvgClient(local_steps=2))
    xs, ys = _x()[None], labels[None]  # what the CLI's data module gives its client
    with pytest.raises(ValueError, match=reason):
        client_gradients(model, xs, ys)
    with pytest.raises(ValueError, match=reason):
        client_updates(model, xs, ys, FedAvgClient(), keys=[0])


def test_an_empty_batch_or_x_the_model_cannot_take_is_refused(model):
    with pytest.raises(ValueError, match="the client's batch is empty"):
        leakage.client_update(model, torch.zeros(0, *SHAPE), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="the client's batch is empty"):
        client_gradients(model, torch.zeros(1, 0, *SHAPE), torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"cannot take inputs of shape \(1, 5, 5\)"):
        leakage.client_update(model, torch.rand(2, 1, 5, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"cannot take inputs of shape \(1, 5, 5\)"):
        leakage.client_update(model, torch.rand(2, 1, 5, 5), torch.tensor([0, 1]), fedavg=FedAvgClient())
    with pytest.raises(ValueError, match="floating-point samples"):
        leakage.client_update(model, torch.ones(2, *SHAPE, dtype=torch.uint8), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="x and y must be tensors"):
        leakage.client_update(model, [[0.0]], torch.tensor([0]))


def test_invert_refuses_bad_arguments_in_one_line(model):
    update = leakage.client_update(model, _x(1), torch.tensor([2]))
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        _invert(model, update, batch_size=0)
    with pytest.raises(ValueError, match="'max_steps' is set by invert itself: use invert's argument steps="):
        _invert(model, update, trainer_options={"max_steps": 5})
    with pytest.raises(ValueError, match="'logger' is set by invert itself"):
        _invert(model, update, trainer_options={"logger": True})
    with pytest.raises(ValueError, match="'max_stepz' is not an argument of lightning's Trainer"):
        _invert(model, update, trainer_options={"max_stepz": 5})
    with pytest.raises(TypeError, match="trainer_options must be a dict"):
        _invert(model, update, trainer_options=[("max_epochs", 1)])
    with pytest.raises(TypeError, match=r"update must be a mapping \{parameter name: tensor\}.*got list"):
        _invert(model, list(update.values()))
    with pytest.raises(ValueError, match="entry 'fc.bias' is not a floating-point tensor"):
        _invert(model, {**update, "fc.bias": [0.0, 0.0, 0.0]})


def test_report_checks_the_true_images_range_and_labels(model):
    x, y = _x(1), torch.tensor([2])
    result = _invert(model, leakage.client_update(model, x, y), trainer_options={"max_epochs": 1})
    assert leakage.report(result, x, y).rows[0]["label_acc"] == 1.0
    with pytest.raises(ValueError, match=r"hold values in \[.*\], outside the data range \[0, 1\] the reconstruction"):
        leakage.report(result, x * 255, y)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\), got -100"):
        leakage.report(result, x, torch.tensor([-100]))
    with pytest.raises(ValueError, match="integer class indices"):
        leakage.report(result, x, torch.tensor([2.0]))
    # a reconstruction made for [0, 4] is scored against images in [0, 4], PSNR over that range (x * 255
    # saturates this model's softmax: its update is all zero, which invert refuses)
    wide = _invert(model, leakage.client_update(model, x * 4, y), data_range=(0.0, 4.0))
    assert leakage.report(wide, x * 4, y).rows[0]["psnr"] == pytest.approx(
        leakage.report(wide, x * 4, y, data_range=4.0).rows[0]["psnr"])


def test_the_api_takes_the_fedavg_client_of_the_cli_or_its_settings():
    torch.manual_seed(0)
    model, x, y = Tiny(), torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 0])
    by_epochs = leakage.client_update(model, x, y, fedavg=leakage.FedAvg(local_epochs=2, local_batch_size=2))
    by_steps = leakage.client_update(model, x, y, fedavg=FedAvgClient(local_steps=4, local_batch_size=2))
    assert all(torch.equal(by_epochs[k], by_steps[k]) for k in by_steps)  # 2 epochs of 2 mini-batches: 4 steps
    with pytest.raises(ValueError, match="local_batch_size 3 does not divide the client's batch of 4 images"):
        leakage.client_update(model, x, y, fedavg=leakage.FedAvg(local_batch_size=3))
    with pytest.raises(TypeError, match="fedavg must be a leakage.FedAvg"):
        leakage.client_update(model, x, y, fedavg={"local_steps": 2})
