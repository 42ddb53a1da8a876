"""DAGER (leakage.attacks.dager_search, leakage.attacks.dager): a GPT-2 decoder's text batch comes back token for
token from its shared gradient and is proven exact, as a library function and through ``leakage fit``; a batch
with more distinct inputs than the hidden size, or a defended update, is reported not exact; a model or update
it cannot read is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from leakage.attacks.dager_search import DecoderLayers, dager_decoder
from leakage.attacks.spans import input_span

from conftest import CONFIGS, REPO, cli_args, cli_error, run_dirs

TEXT = REPO / "leakage" / "assets" / "text"  # the bundled sentences and GPT-2 BPE
SENTENCES = (TEXT / "fortunes_0_999.txt").read_text().splitlines()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast(vocab=str(TEXT / "encoder.json"), merges=str(TEXT / "vocab.bpe"))
    tok.pad_token = tok.eos_token
    return tok


def decoder(tok, d: int = 64, layers: int = 3, seed: int = 0):
    """A GPT-2 sequence classifier at random initialisation over the full BPE vocabulary, no dropout."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=d, n_layer=layers, n_head=2, n_positions=64, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, num_labels=2, pad_token_id=tok.eos_token_id)
    return GPT2ForSequenceClassification(cfg).eval()


def client_update(model, tok, lines):
    """What the client shares: the batch-mean cross-entropy gradient of every parameter, and its batch."""
    enc = tok(lines, padding=True, return_tensors="pt")
    loss = model(**enc, labels=torch.arange(len(lines)) % 2).loss
    names, params = zip(*model.named_parameters())
    grads = dict(zip(names, torch.autograd.grad(loss, params)))
    truth = [ids[m.bool()].tolist() for ids, m in zip(enc.input_ids, enc.attention_mask)]
    return grads, truth, enc.input_ids.shape[1]


def test_a_batch_of_two_sentences_comes_back_exactly_and_is_proven(tokenizer):
    model = decoder(tokenizer)
    grads, truth, n = client_update(model, tokenizer, SENTENCES[:2])
    res = dager_decoder(model, grads, 2, n, pad_token_id=tokenizer.eos_token_id)
    assert sorted(res.sequences) == sorted(truth) and res.exact == [True, True], res.notes
    assert [tokenizer.decode(s) for s in sorted(res.sequences, key=truth.index)] == SENTENCES[:2]
    assert res.ranks == (sum(map(len, truth)),) * 2 and max(res.distances) < 1e-3 and not res.notes


def test_a_scaled_update_and_a_batch_of_eight_come_back_too(tokenizer):
    """The test reads spans, so the update's scale (a learning rate, a sum instead of a mean) is irrelevant."""
    model = decoder(tokenizer, d=128, seed=1)
    grads, truth, n = client_update(model, tokenizer, SENTENCES[10:18])
    res = dager_decoder(model, {k: -0.01 * g for k, g in grads.items()}, 8, n, pad_token_id=tokenizer.eos_token_id)
    assert sorted(res.sequences) == sorted(truth) and all(res.exact), res.notes


def test_layernorms_with_their_own_scale_and_shift(tokenizer):
    """A trained model's LayerNorms have a weight and a bias of their own (here drawn at random): the closed-form
    screen of the vocabulary goes through both and equals the distances of the inputs themselves, and the
    batch still comes back exactly."""
    model = decoder(tokenizer, d=128, seed=2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=gen))
    grads, truth, n = client_update(model, tokenizer, SENTENCES[20:24])
    layers = DecoderLayers(model)
    span = input_span(grads[layers.grad_names[0]], 1e-6)
    direct = torch.stack([span.distances(layers.first_inputs(p)) for p in range(3)])
    assert torch.allclose(layers.first_distances(span, 3), direct, atol=1e-6)
    res = dager_decoder(model, grads, 4, n, pad_token_id=tokenizer.eos_token_id)
    assert sorted(res.sequences) == sorted(truth) and all(res.exact), res.notes


def test_more_tokens_than_the_hidden_size_is_reported_not_exact(tokenizer):
    """d = 32 and a batch of 6 sentences (~75 tokens): both spans fill the space, every token passes, and
    nothing is claimed."""
    model = decoder(tokenizer, d=32)
    grads, truth, n = client_update(model, tokenizer, SENTENCES[:6])
    assert sum(map(len, truth)) > 32
    res = dager_decoder(model, grads, 6, n, pad_token_id=tokenizer.eos_token_id, max_extensions=5000)
    assert not any(res.exact) and res.ranks == (31, 31)  # an untrained LayerNorm's outputs sum to 0: 31 dimensions
    assert any("fills all 31 dimensions" in note for note in res.notes), res.notes


def test_a_noisy_update_is_not_proven(tokenizer):
    """Gaussian noise on the update (a DP defense) fills the spans: what comes back is not claimed exact."""
    model = decoder(tokenizer)
    grads, truth, n = client_update(model, tokenizer, SENTENCES[:2])
    gen = torch.Generator().manual_seed(0)
    noisy = {k: g + 1e-3 * g.norm() / g.numel() ** 0.5 * torch.randn(g.shape, generator=gen) for k, g in grads.items()}
    res = dager_decoder(model, noisy, 2, n, pad_token_id=tokenizer.eos_token_id, max_extensions=1000)
    assert not any(res.exact) and res.notes


def test_a_model_or_update_it_cannot_read_is_refused_in_one_line(tokenizer):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64))
    for model, grads, match in [
        (bert, {}, "DAGER attacks a GPT-2 decoder .* got BertModel"),
        (torch.nn.Linear(4, 2), {}, "got Linear"),
        (decoder(tokenizer, layers=1), {}, "at least 3 blocks"),
        (decoder(tokenizer, layers=2), {}, "at least 3 blocks .* block 1 must not be the last"),
        (decoder(tokenizer), {}, r"no gradient for transformer\.h\.0\.attn\.c_attn\.weight"),
    ]:
        with pytest.raises(ValueError, match=match) as err:
            dager_decoder(model, grads, 2, 8)
        assert "\n" not in str(err.value)
    model = decoder(tokenizer)
    zero = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="all zeros"):
        dager_decoder(model, zero, 2, 8)
    with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
        dager_decoder(model, zero, 2, 65)
    assert DecoderLayers(model).grad_names[1] == "transformer.h.1.attn.c_attn.weight"


def test_the_span_of_a_linear_layer_is_its_inputs():
    """nn.Linear's [out, in] gradient and Conv1D's [in, out] give the same span, that of the inputs."""
    gen = torch.Generator().manual_seed(0)
    X, G = torch.randn(5, 16, generator=gen, dtype=torch.float64), torch.randn(5, 40, generator=gen, dtype=torch.float64)
    span = input_span(X.T @ G, 1e-6)
    assert span.rank == 5 and span.distances(X).max() < 1e-10
    assert span.distances(torch.randn(3, 16, generator=gen, dtype=torch.float64)).min() > 0.3
    assert input_span(G.T @ X, 1e-6, rows_are_inputs=False).distances(X).max() < 1e-10


def saved_gpt2(folder, d: int, layers: int = 3) -> str:
    """A GPT-2 classifier of your own, saved as a ``transformers`` folder (config.json, model.safetensors)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=d, n_layer=layers, n_head=2, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, num_labels=2, pad_token_id=50256)
    GPT2ForSequenceClassification(cfg).save_pretrained(folder)
    return str(folder)


def _fit(tmp_path, *extra: str) -> str:
    from leakage.cli import main

    main(cli_args(tmp_path, "--config", str(CONFIGS / "text_dager.yaml"), "--data.num_victims", "1",
                  "--data.batch_size", "2", "--data.source.seq_len", "8", "--report.image_every_n_steps", "0", *extra))
    return json.loads((run_dirs(tmp_path)[0] / "metrics.json").read_text())["summary"]


def test_leakage_fit_recovers_a_batch_and_proves_it(tmp_path, capsys):
    """``attack: dager`` on your own GPT-2 (width 128, 3 blocks): both sentences come back in order, their
    labels are solved from the head, and the recovered batch reproduces the whole update."""
    model = saved_gpt2(tmp_path / "gpt2", d=128)
    summary = _fit(tmp_path, "--model.model", "leakage.engine.textmodels.PretrainedText", "--model.model.path", model)
    out = capsys.readouterr().out
    assert summary["exact_sequences_mean"] == 1.0 and summary["rouge2_mean"] == 1.0 and summary["label_acc"] == 1.0, out
    assert "rec 1   A man who keeps stealing mopeds\n" in out  # cut to 8 tokens
    assert "reproduces the whole observed update to relative residual <= 0.0001): 1/1 victims" in out


def test_leakage_fit_past_the_hidden_size_is_not_exact(tmp_path, capsys):
    """Width 32 and 4 sentences of up to 16 tokens (55 tokens): both spans fill their 31 dimensions (an untrained
    LayerNorm's), every token passes, nothing is claimed."""
    model = saved_gpt2(tmp_path / "gpt2", d=32)
    summary = _fit(tmp_path, "--model.model", "leakage.engine.textmodels.PretrainedText", "--model.model.path", model,
                   "--data.source.seq_len", "16", "--data.batch_size", "4", "--model.max_extensions", "2000")
    out = capsys.readouterr().out
    assert summary["exact_sequences_mean"] == 0.0 and "fills all 31 dimensions" in out, out
    assert "0 distinct sequences recovered for a batch of 4" in out and "1 of 1 victims failed" in out


@pytest.mark.parametrize("model, message", [
    ("gpt2_tiny", "DAGER needs a GPT-2 classifier with at least 3 blocks"),
    ("bert_tiny", "DAGER needs a BERT classifier with at least 3 layers; this one has 2"),
])
def test_leakage_fit_refuses_a_model_it_cannot_attack_in_one_line(tmp_path, capsys, model, message):
    line = cli_error(capsys, cli_args(tmp_path, "--config", str(CONFIGS / "text_dager.yaml"), "--model.model", model))
    assert message in line


def encoder(d: int = 128, layers: int = 3):
    """A BERT sequence classifier at random initialisation over the bundled BPE's vocabulary, no dropout."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50257, hidden_size=d, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=4 * d, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, num_labels=2, pad_token_id=50256)
    return BertForSequenceClassification(cfg).eval()


@pytest.mark.parametrize("lines, n", [(SENTENCES[:1], None), (SENTENCES[:2], 8)])
def test_an_encoder_batch_of_one_or_two_comes_back_exactly(tokenizer, lines, n):
    """BERT (width 128, 3 layers), right padding under the attention mask: one whole sentence, or two cut to
    8 tokens, tested whole against layer 1's span."""
    from leakage.attacks.dager_encoder import dager_encoder

    model = encoder()
    enc = tokenizer(lines, padding=True, truncation=n is not None, max_length=n, return_tensors="pt")
    loss = model(**enc, labels=torch.arange(len(lines)) % 2).loss
    names, params = zip(*model.named_parameters())
    grads = dict(zip(names, torch.autograd.grad(loss, params)))
    truth = [ids[m.bool()].tolist() for ids, m in zip(enc.input_ids, enc.attention_mask)]
    res = dager_encoder(model, grads, len(lines), enc.input_ids.shape[1], pad_token_id=tokenizer.eos_token_id)
    assert sorted(res.sequences) == sorted(truth) and all(res.exact), res.notes


def test_the_encoder_search_refuses_what_it_cannot_take():
    from leakage.attacks.dager_encoder import dager_encoder

    with pytest.raises(ValueError, match="batches of 1 or 2 sequences, got 3"):
        dager_encoder(encoder(d=32), {}, 3, 8)
    with pytest.raises(ValueError, match="at least 3 layers; this one has 2"):
        dager_encoder(encoder(d=32, layers=2), {}, 1, 8)
    with pytest.raises(ValueError, match="no gradient for bert.encoder.layer.0.attention.self.query.weight"):
        dager_encoder(encoder(d=32), {}, 1, 8)


def test_leakage_fit_runs_the_encoder_search_on_your_own_bert(tmp_path, capsys):
    """``attack: dager`` on a BERT classifier (width 128, 3 layers) of your own: 2 sentences of 8 tokens."""
    folder = tmp_path / "bert"
    encoder().save_pretrained(folder)
    summary = _fit(tmp_path, "--model.model", "leakage.engine.textmodels.PretrainedText", "--model.model.path",
                   str(folder))
    out = capsys.readouterr().out
    assert summary["exact_sequences_mean"] == 1.0 and "DAGER: span tests of BERT's" in out and "1/1 victims" in out, out


def test_the_docs_example_recovers_both_sentences_and_proves_them(capsys):
    """docs/text.md's DAGER example runs as written."""
    import re

    section = (REPO / "docs" / "text.md").read_text().split("## DAGER\n", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    exec(compile(code, "docs/text.md", "exec"), {"__name__": "docs_example"})
    assert capsys.readouterr().out.splitlines() == [
        "True ... with liberty and justice for all who can afford it.",
        "True A man who keeps stealing mopeds is an obvious cycle-path."]
