"""Clients that train less (frozen embeddings, LoRA adapters) and what their text updates still leak; the
token set of a tied embedding (its thresholded rule)."""

from __future__ import annotations

import pytest
import torch

from leakage.attacks.dager_search import dager_decoder
from leakage.attacks.tokenset import TIED_THRESHOLD, TokenSetAttack, embedding_names, token_sets
from leakage.data.datamodule import VictimDataModule
from leakage.data.sources import BundledText
from leakage.engine.lora import LoraText
from leakage.engine.models import build_model
from leakage.engine.textmodels import tied_text_model
from leakage.federated.client import FedSGD, client_gradients
from leakage.federated.fedavg import FedAvg, client_updates, per_problem_updates, schedules
from leakage.records import Observation

WTE, WPE = "model.transformer.wte.weight", "model.transformer.wpe.weight"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_frozen_embedding_is_not_shared_and_the_token_set_says_so_in_one_line():
    dm = VictimDataModule(source=BundledText(seq_len=8), client=FedSGD(freeze=["wte", "wpe"]), batch_size=2)
    attack = TokenSetAttack("gpt2_tiny", dm.input_shape, dm.num_classes, labels="weight_count")
    obs = dm.prepare(attack.target)
    names = [n for n, _ in attack.target.named_parameters()]
    assert WTE not in obs.gradients and WPE not in obs.gradients
    assert list(obs.gradients) == [n for n in names if n not in (WTE, WPE)]  # the rest, as computed
    full = client_gradients(attack.target, dm.secret.images, dm.secret.labels)
    assert all(torch.equal(obs.gradients[n], full[n]) for n in obs.gradients)
    with pytest.raises(ValueError) as err:
        attack.attach(obs)
    line = str(err.value)
    assert "\n" not in line and f"no gradient for {WTE}" in line and "the token set cannot be read" in line


@pytest.mark.parametrize("settings, message", [
    ({"trainable": ["lora_"]}, "pattern 'lora_' matches no parameter"),
    ({"freeze": ["."]}, "leave no parameter to train"),
    ({"freeze": ["(wte"]}, "is not a regular expression"),
    ({"trainable": []}, "client.trainable is empty"),
])
def test_bad_trainable_settings_are_one_line(settings, message):
    model = build_model("gpt2_tiny", (4,), 2)  # no adapters: "lora_" matches nothing
    with pytest.raises(ValueError, match=message) as err:
        FedSGD(**settings).trained(model)
    assert "\n" not in str(err.value)


def test_a_fedavg_client_that_freezes_leaves_those_weights_and_the_attacker_simulates_it():
    model = LoraText("gpt2_tiny", seq_len=4, rank=2, adapter_std=0.02, seed=3)
    client = FedAvg(local_steps=2, local_lr=0.5, trainable=["lora_", "score"]).for_batch(2)
    x = torch.tensor([[[10., 20., 30., 40.], [50., 60., 70., 50256.]]])
    y = torch.tensor([[0, 1]])
    update = client_updates(model, x, y, client, keys=[7])
    assert sorted(update) == sorted(n for n, _ in model.named_parameters() if "lora_" in n or "score" in n)
    simulated = per_problem_updates(model, x, y, client, schedules(client, 2, [7]))  # pseudo-gradient units
    assert sorted(simulated) == sorted(update)
    for n in update:  # the client's delta is -lr x the simulation's pseudo-gradient: frozen weights held in both
        torch.testing.assert_close(update[n], -0.5 * simulated[n], rtol=1e-4, atol=1e-7)


def test_a_lora_update_carries_only_the_adapters_and_a_fresh_adapter_has_no_a_gradient():
    model = LoraText("gpt2_tiny", seq_len=6, rank=4)  # peft's init: B = 0
    x, y = BundledText(seq_len=6).open().encode([5])
    update = FedSGD(trainable=["lora_", "score"]).shared_update(client_gradients(model, x[None], y[None]), model)
    assert set(update) == {n for n, _ in model.named_parameters() if "lora_" in n} | {"model.score.weight"}
    assert all(float(update[n].abs().max()) == 0 for n in update if "lora_A" in n)  # dL/dA = X^T G B^T = 0
    assert all(float(update[n].abs().max()) > 0 for n in update if "lora_B" in n)
    assert WTE not in update  # so no token set either


def test_dager_reads_lora_a_gradients_and_recovers_a_sentence_exactly():
    corpus = BundledText(seq_len=8).open()
    x, y = corpus.encode([0, 1])
    model = LoraText("gpt2_tiny", seq_len=8, rank=32, adapter_std=0.02, layers=3)  # DAGER needs >= 3 blocks
    update = FedSGD(trainable=["lora_", "score"]).shared_update(client_gradients(model, x[None], y[None]), model)
    assert not any("c_attn.base_layer" in n for n in update)
    found = dager_decoder(model, {k: v[0] for k, v in update.items()}, 2, 8, pad_token_id=50256)
    truth = [[int(t) for t in row if t != 50256] for row in x]
    assert sorted(found.sequences) == sorted(truth) and all(found.exact)
    fresh = LoraText("gpt2_tiny", seq_len=8, rank=32, layers=3)  # B = 0: nothing to read
    update = FedSGD(trainable=["lora_", "score"]).shared_update(client_gradients(fresh, x[None], y[None]), fresh)
    with pytest.raises(ValueError, match="LoRA A gradient of .* is all zeros"):
        dager_decoder(fresh, {k: v[0] for k, v in update.items()}, 2, 8, pad_token_id=50256)


def test_a_small_adapter_rank_proves_nothing():
    x, y = BundledText(seq_len=8).open().encode([0, 1])  # 16 tokens, more than the rank
    model = LoraText("gpt2_tiny", seq_len=8, rank=4, adapter_std=0.02, layers=3)
    update = FedSGD(trainable=["lora_"]).shared_update(client_gradients(model, x[None], y[None]), model)
    found = dager_decoder(model, {k: v[0] for k, v in update.items()}, 2, 8, pad_token_id=50256)
    assert not any(found.exact) and "adapter's full rank" in found.notes[0]


def test_the_tied_embeddings_thresholded_rule_reads_the_tokens_and_the_label_tokens():
    torch.manual_seed(0)
    model = tied_text_model("gpt2_tiny", 8)
    token, _, tied = embedding_names(model)
    assert tied and token == WTE  # the tied weight by the name its gradient is shared under
    x, y = BundledText(seq_len=8).open().encode([0, 1, 2])
    grads = client_gradients(model, x[None], y[None])
    assert bool((grads[WTE][0].norm(dim=1) > 0).all())  # every row has a gradient: the exact rule reads nothing
    obs = Observation({WTE: grads[WTE]}, 3, (8,), 50257)
    truth = set(x.long().flatten().tolist()) - {50256}
    read = set(token_sets(obs, model, TIED_THRESHOLD)[0].tolist())
    assert truth <= read  # recall 1
    assert read - truth <= set(y.tolist())  # precision: the only extra rows are the labels' tokens (class k = token k)
    assert len(token_sets(obs, model, 0.0)[0]) == 50257
    assert TokenSetAttack(model, (8,), 50257).threshold == TIED_THRESHOLD
    assert TokenSetAttack("gpt2_tiny", (8,), 2).threshold == 0.0


def test_dager_still_reads_an_update_whose_embeddings_are_frozen():
    from leakage.engine.textmodels import text_model

    torch.manual_seed(0)
    model = text_model("gpt2_tiny", 8, 2, layers=3)  # DAGER needs >= 3 blocks
    x, y = BundledText(seq_len=8).open().encode([2, 3])
    update = FedSGD(freeze=["wte", "wpe"]).shared_update(client_gradients(model, x[None], y[None]), model)
    assert WTE not in update and WPE not in update  # no token set, no length
    found = dager_decoder(model, {k: v[0] for k, v in update.items()}, 2, 8, pad_token_id=50256)
    assert sorted(found.sequences) == sorted([int(t) for t in row if t != 50256] for row in x) and all(found.exact)
