"""Label DP (leakage.federated.labeldp): randomized response keeps a label at its formula's rate and flips it
uniformly, RRWithPrior is epsilon-label-DP as sampled, the label attacks (bias_count, iLRG) name no more labels
than the bound e^eps / (e^eps + K - 1) allows, and in ``leakage fit`` the client's update is computed on the
randomized labels (the attack recovers those, the report scores them against the true ones)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

import leakage
from leakage.attacks.labels import restore_batch_labels
from leakage.engine.models import build_model
from leakage.federated.labeldp import (RandomizedResponse, RRWithPrior, keep_probability, randomized_response,
                                       rr_with_prior, top_k_classes)

from conftest import fit_in_process

K = 10
SHAPE = (1, 28, 28)


@pytest.mark.parametrize("epsilon", [1.0, 4.0])
def test_randomized_response_keeps_a_label_at_its_rate_and_flips_it_uniformly(epsilon):
    n = 40_000
    labels = torch.arange(n) % K
    noisy = randomized_response(labels, K, epsilon, torch.Generator().manual_seed(0))
    p = keep_probability(epsilon, K)
    assert abs(p - math.exp(epsilon) / (math.exp(epsilon) + K - 1)) < 1e-12
    kept = float((noisy == labels).float().mean())
    assert abs(kept - p) <= 4 * math.sqrt(p * (1 - p) / n)  # four standard errors
    offsets = ((noisy - labels) % K)[noisy != labels]  # 1 to K - 1: which other class
    counts = torch.bincount(offsets, minlength=K)[1:].numpy()
    assert chisquare(counts).pvalue > 1e-3  # uniform over the other K - 1 classes


def test_rr_with_prior_is_epsilon_label_dp_as_sampled():
    epsilon, n = 1.0, 20_000
    prior = torch.tensor([0.3, 0.3, 0.2] + [0.2 / 7] * 7, dtype=torch.float64)
    classes = top_k_classes(prior, epsilon)
    gains = [keep_probability(epsilon, k) * float(prior.sort(descending=True).values[:k].sum()) for k in range(1, K + 1)]
    assert len(classes) == 1 + max(range(K), key=lambda i: gains[i]) == 3 and sorted(classes.tolist()) == [0, 1, 2]
    assert len(top_k_classes(torch.full((K,), 0.1, dtype=torch.float64), epsilon)) == K  # uniform: plain RR
    gen = torch.Generator().manual_seed(1)
    # P(output | label) for a label inside Y_k (0) and one outside (5), sampled
    freq = {y: torch.bincount(rr_with_prior(torch.full((n,), y), prior, epsilon, gen), minlength=K).double() / n
            for y in (0, 1, 5)}
    p3 = keep_probability(epsilon, 3)
    assert abs(float(freq[0][0]) - p3) < 0.02 and abs(float(freq[0][1]) - (1 - p3) / 2) < 0.02
    assert abs(float(freq[5][0]) - 1 / 3) < 0.02 and float(freq[5][5]) == 0 and float(freq[0][3:].sum()) == 0
    for a in freq.values():  # every output's chance moves by at most e^eps from one label to another
        for b in freq.values():
            ratio = (a[:3] / b[:3]).max()
            assert float(ratio) <= math.exp(epsilon) * 1.1


def test_the_label_attacks_name_no_more_labels_than_the_bound_allows():
    """One image per update (the per-example quantity label DP bounds), 200 MNIST images; without the
    defense both attacks name every label."""
    x, y = leakage.bundled_images("mnist", range(200))
    model = build_model("lenet", SHAPE, K, seed=1234)
    xb, yb = x[:, None], y[:, None]
    for strategy in ("bias_count", "ilrg"):
        clean = restore_batch_labels(model, leakage.client_update(model, xb, yb), 1, SHAPE, strategy)
        assert bool((clean == yb).all())
    for epsilon in (1.0, 2.0, 4.0, 8.0):
        bound = keep_probability(epsilon, K)
        noisy = RandomizedResponse(epsilon).privatize(yb, K)
        update = leakage.client_update(model, xb, noisy)
        for strategy in ("bias_count", "ilrg"):
            named = float((restore_batch_labels(model, update, 1, SHAPE, strategy) == yb).float().mean())
            assert named <= bound + 3 * math.sqrt(bound * (1 - bound) / len(y)) + 1e-9, (epsilon, strategy, named, bound)


def test_leakage_fit_computes_the_update_on_the_randomized_labels(tmp_path):
    cli = fit_in_process(tmp_path, "mnist_dlg.yaml", "--trainer.callbacks+=leakage.federated.labeldp.RandomizedResponse",
                         "--trainer.callbacks.epsilon", "1", "--model.labels", "ilrg", "--trainer.max_steps", "1")
    dm = cli.datamodule
    (defense,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, RandomizedResponse)]
    noisy = defense.privatize(dm.secret.labels, K, dm.observation.update_keys)
    assert not torch.equal(noisy, dm.secret.labels)  # measured: 15 of 20 labels flipped
    assert torch.equal(cli.model.recovered_labels().cpu(), noisy)  # what the update holds: the randomized labels
    assert "defense 1: randomized_response epsilon=1.0" in cli.stdout and "label accuracy 25.0%" in cli.stdout


def test_bad_label_dp_settings_are_one_line_errors():
    for make, message in ((lambda: RandomizedResponse(0), "epsilon must be a finite number > 0"),
                          (lambda: RandomizedResponse(float("inf")), "epsilon must be a finite number > 0"),
                          (lambda: RandomizedResponse(1.0, seed=0.5), "seed must be an integer"),
                          (lambda: RRWithPrior(1.0, prior=[0.5, 0.6]), "prior must sum to 1"),
                          (lambda: RRWithPrior(1.0, prior=[1.0]), "at least 2 probabilities"),
                          (lambda: RRWithPrior(1.0, prior=[0.5, 0.5]).privatize(torch.zeros(1, 2, dtype=torch.long), K),
                           "prior has 2 probabilities for 10 classes")):
        with pytest.raises(ValueError, match=message) as err:
            make()
        assert "\n" not in str(err.value)


def test_a_sweep_runs_each_label_dp_cell_as_its_own_fit():
    """configs/label_dp_sweep.yaml: the update is computed again on each cell's own model, so its cells are
    never solved as one batched fit."""
    from leakage.sweep.batching import batchable

    assert not batchable({"class_path": "leakage.federated.labeldp.RandomizedResponse", "init_args": {"epsilon": 1}})
    assert batchable({"class_path": "leakage.federated.defenses.GaussianNoise", "init_args": {"sigma": 0.1}})
