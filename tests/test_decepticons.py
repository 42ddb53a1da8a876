"""Decepticons (leakage.federated.decepticons, leakage.attacks.decepticons): a malicious server rewrites a GPT-2
(or BERT) classifier so that its imprint MLPs isolate each token's hidden state; the attack reads bundled sentences back
from one update and proves them exact, through ``leakage fit`` and as a library function; the same attack on an
honest server's update, or on settings or models it cannot use, is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from leakage.attacks.decepticons import decode_update
from leakage.data.sources import BundledText
from leakage.engine.textmodels import GPT2_PAD, text_model
from leakage.federated.decepticons import DecepticonServer

from conftest import CONFIGS, cli_args, cli_error, run_dirs

CONFIG = str(CONFIGS / "text_decepticons.yaml")


def _update(server: DecepticonServer, ids: torch.Tensor, labels: torch.Tensor) -> dict:
    """The imprinted layers' batch-mean cross-entropy gradient of the model ``server`` sent (the client's update)."""
    torch.manual_seed(0)
    sent = server.send(text_model("gpt2_tiny", ids.shape[1], 2), (ids.shape[1],))
    params = dict(sent.named_parameters())
    names = sorted({f"{layer}.{s}" for layer, _ in server.layout()["layers"] for s in ("weight", "bias")})
    loss = torch.nn.functional.cross_entropy(sent(ids), labels)
    return dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))


def test_one_sentence_comes_back_token_for_token():
    """One bundled sentence of 16 tokens (padded) through a tiny GPT-2: every token at its position, the padding
    left as padding, and the read-out calls itself clean."""
    ids, labels = BundledText(seq_len=16).open().encode([1])
    got, clean, notes = _read(DecepticonServer(directions=4), ids.long(), labels)
    assert got.tolist() == ids.long().tolist() and clean and not notes


def _read(server: DecepticonServer, ids: torch.Tensor, labels: torch.Tensor):
    grads = _update(server, ids, labels)
    return decode_update(server.layout(), grads, ids.shape[0], ids.shape[1], GPT2_PAD)


def _fit(tmp_path, *extra: str) -> dict:
    from leakage.cli import main

    main(cli_args(tmp_path, "--config", CONFIG, "--data.num_victims", "1", "--report.image_every_n_steps", "0", *extra))
    return json.loads((run_dirs(tmp_path)[0] / "metrics.json").read_text())["summary"]


def test_leakage_fit_reads_two_sentences_and_proves_them(tmp_path, capsys):
    """``attack: decepticons`` on the config's tiny GPT-2: a batch of 2 bundled sentences comes back with ROUGE-1
    above 0.95, and the batch is proven exact (it reproduces the whole update)."""
    summary = _fit(tmp_path)
    out = capsys.readouterr().out
    assert summary["rouge1_mean"] > 0.95 and summary["exact"] == 1, out
    assert "malicious server: Decepticons" in out
    assert "reproduces the whole observed update to relative residual <= 0.0001): 1/1 victims" in out


def test_honest_server_update_is_refused_in_one_line(tmp_path, capsys):
    """The attack reads what the malicious server planted: on an honest server's update it has nothing to read."""
    line = cli_error(capsys, cli_args(tmp_path, "--config", CONFIG, "--data.server", "leakage.federated.server.Server"))
    assert "run it with --data.server DecepticonServer" in line


@pytest.mark.parametrize("extra, message", [
    (("--data.server.init_args.num_bins", "200"), "4 directions of 200 bins do not fit the MLP's width 256"),
    (("--data.server.init_args.blocks", "2"), "blocks 2 leaves no block of the model's 2 unchanged"),
    (("--data.server.init_args.num_bins", "1"), "num_bins must be an integer >= 2"),
])
def test_bad_settings_give_one_line(tmp_path, capsys, extra, message):
    line = cli_error(capsys, cli_args(tmp_path, "--config", CONFIG, *extra))
    assert message in line


def test_a_model_without_a_transformer_is_refused_in_one_line():
    with pytest.raises(ValueError, match="rewrites a GPT-2 or BERT classifier .* got Linear"):
        DecepticonServer().send(torch.nn.Linear(8, 2), (8,))


def test_leakage_fit_reads_a_bert_batch_and_proves_it(tmp_path, capsys):
    """The same server and attack on a tiny BERT classifier (post-LN blocks, bidirectional attention)."""
    summary = _fit(tmp_path, "--model.model", "bert_tiny")
    out = capsys.readouterr().out
    assert summary["rouge1_mean"] > 0.95 and summary["exact"] == 1, out


def test_a_noisy_update_is_not_proven(tmp_path, capsys):
    """Gaussian noise on the update (a DP defense): whatever is read, nothing is claimed exact."""
    extra = tmp_path / "noise.yaml"
    extra.write_text("trainer:\n  callbacks:\n    - class_path: leakage.federated.defenses.GaussianNoise\n"
                     "      init_args: {sigma: 1.0e-6}\n")
    summary = _fit(tmp_path, "--config", str(extra))
    assert summary["exact"] == 0, capsys.readouterr().out
