"""iDLG label recovery on every bundled image, from the bias gradient and from the weight gradient."""

from __future__ import annotations

import pytest
import torch

from leakage.attacks.settings import Dummies
from leakage.attacks.gradient_inversion import GradientInversion
from leakage.attacks.labels import last_linear
from leakage.data.datamodule import VictimDataModule
from leakage.attacks.labels import idlg_labels
from leakage.engine.models import build_model

from conftest import bundled_labels
from leakage.data.sources import Bundled


@pytest.mark.parametrize("dataset, shape", [("cifar10", (3, 32, 32)), ("mnist", (1, 28, 28))])
def test_idlg_recovers_every_bundled_label(dataset, shape):
    model = build_model("lenet", shape, 10)  # untrained: DLG's random init
    dm = VictimDataModule(Bundled(dataset), num_victims=20)
    obs = dm.prepare(model)
    truth = dm.secret.labels[:, 0]
    assert truth.tolist() == bundled_labels(dataset)
    assert len(set(truth.tolist())) >= 7  # a real mix of classes, not one label repeated

    name, layer = last_linear(model)
    w, b = f"{name}.weight", (f"{name}.bias" if layer.bias is not None else None)
    assert (w, b) == ("fc.weight", "fc.bias")
    with_bias = idlg_labels(obs.gradients[w], obs.gradients[b])
    weight_only = idlg_labels(obs.gradients[w])
    assert with_bias.shape == (20,)
    assert with_bias.tolist() == truth.tolist()
    assert weight_only.tolist() == truth.tolist()


def test_idlg_labels_of_the_attack_module():
    """labels='idlg' fixes each problem's label from the observation alone (restarts share it)."""
    dm = VictimDataModule(Bundled("mnist"), indices=[0, 1, 2, 3, 4])
    module = GradientInversion(model="lenet", input_shape=dm.input_shape, num_classes=10, labels="idlg", dummies=Dummies(restarts=2))
    obs = dm.prepare(module.target)
    module.attach(obs)
    labels = module.recovered_labels()
    assert labels.shape == (10, 1)
    assert labels[::2, 0].tolist() == dm.secret.labels[:, 0].tolist()
    assert labels[1::2, 0].tolist() == dm.secret.labels[:, 0].tolist()


def test_weight_only_rule_on_a_hand_made_gradient():
    # rows p_j * h for j != y and (p_y - 1) * h for the true class, h >= 0
    h = torch.tensor([0.2, 0.5, 1.0])
    p = torch.tensor([0.1, 0.6, 0.3])
    y = 2
    grad_w = (p - torch.nn.functional.one_hot(torch.tensor(y), 3))[:, None] * h[None]
    assert idlg_labels(grad_w[None]).tolist() == [y]
    assert idlg_labels(grad_w[None], (p - torch.nn.functional.one_hot(torch.tensor(y), 3))[None]).tolist() == [y]


def test_an_estimate_far_above_the_batch_is_trimmed_as_one_label_at_a_time_would_be():
    """Counts far above the batch (a text model's weight_count estimate) are trimmed in closed form to
    what taking one label at a time from the smallest remainder gives, and sum to the batch."""
    from leakage.attacks.labels import _round_to_total

    def one_at_a_time(estimate, total):
        est = estimate.clamp(min=0)
        counts = est.floor()
        for v in range(est.shape[0]):
            frac = torch.where(counts[v] > 0, est[v] - counts[v], torch.full_like(est[v], float("inf")))
            for _ in range(int(counts[v].sum()) - total):
                c = int(frac.argmin())
                counts[v, c] -= 1
                frac[c] = float("inf") if counts[v, c] == 0 else frac[c] + 1
        return counts.long()

    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        K = int(torch.randint(2, 10, (1,), generator=gen))
        total = int(torch.randint(1, 20, (1,), generator=gen))
        est = torch.rand(2, K, generator=gen) * 40 + total  # every class alone above the batch
        assert torch.equal(_round_to_total(est.clone(), total), one_at_a_time(est.clone(), total))
    far = _round_to_total(torch.tensor([[2.5e6, 1.25e6 + 0.5]]), 4)
    assert far.tolist() == [[4, 0]]
