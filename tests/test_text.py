"""Text: the kind (ROUGE, token accuracy, matching, decoding), the text sources, the transformer
models behind one wrapper, the client's update on them, and a text run from the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from leakage.cli import main
from leakage.data.datamodule import VictimDataModule
from leakage.data.kinds import KINDS, TextKind
from leakage.data.sources import BundledText, TextFile
from leakage.data.tokenizer import TextTokenizer
from leakage.engine.models import build_model
from leakage.federated.client import client_gradients

from conftest import CONFIGS, cli_args, cli_error, run_dirs


pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(kind: TextKind, texts: list[str]) -> torch.Tensor:
    rows = []
    for t in texts:
        ids = kind.tokenizer.encode(t)[: kind.seq_len]
        rows.append(ids + [kind.pad_token_id] * (kind.seq_len - len(ids)))
    return torch.tensor(rows, dtype=torch.float32)


def test_text_kind_scores_known_sentences_and_matches_slots():
    kind = TextKind(8, TextTokenizer())
    assert KINDS["text"] is TextKind
    truth = _ids(kind, ["the cat sat on the mat", "a dog ran far away from home"])[None]  # [1, 2, 8]
    recon = truth.clone()[:, [1, 0]]  # the slots swapped: the Hungarian algorithm pairs them back
    out = kind.evaluate(recon, truth)
    assert out["perm"].tolist() == [[1, 0]]
    assert out["rouge1"].tolist() == [1.0] and out["exact_sequences"].tolist() == [1.0] and out["token_accuracy"].tolist() == [1.0]
    wrong = truth.clone()
    wrong[0, 0, 1] = kind.tokenizer.encode(" dog")[0]  # "the dog sat on the mat": one word of six wrong
    out = kind.evaluate(wrong, truth)
    assert out["sequence_token_accuracy"][0, 0].item() == pytest.approx(5 / 6)  # six real tokens, two pads
    assert out["sequence_exact_sequences"][0].tolist() == [0.0, 1.0]
    assert out["sequence_rouge1"][0, 0].item() == pytest.approx(5 / 6)
    assert out["correct"][0, 0].tolist() == [True, False, True, True, True, True, False, False]
    with pytest.raises(ValueError, match="token ids in"):
        kind.check_truth(truth + 0.5)


def test_embeddings_decode_to_the_nearest_token_and_the_view_marks_wrong_tokens():
    from leakage.reporting.views import view_of

    model = build_model("gpt2_tiny", (8,), 2)
    kind = TextKind(8, TextTokenizer()).bind(model)
    truth = _ids(kind, ["A man who keeps stealing mopeds is an obvious cycle-path."])[None]
    emb = kind.embed(truth.long())
    noisy = emb + 0.2 * emb.std() * torch.randn(emb.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(kind.decode(noisy), truth.long())
    emb[0, 0, 2] = kind.embed(torch.tensor([kind.tokenizer.encode(" dog")[0]]))[0]
    metrics = kind.evaluate(emb, truth)
    details = view_of(kind).details(emb, truth, metrics)
    assert "[ dog]*" in details["text"] and "A man who keeps" in details["text"]
    assert "line-through" in details["html"] and "~~ dog~~" in details["markdown"]


def test_bundled_text_and_text_files(tmp_path):
    corpus = BundledText(seq_len=8).open()
    assert len(corpus) == 1000 and corpus.num_classes == 2
    x, y = corpus.encode([1, 3])
    assert x.shape == (2, 8) and x.dtype == torch.float32
    assert corpus.kind.texts(x.long())[0] == "A man who keeps stealing mopeds"  # m-op-eds: 3 tokens
    assert y.tolist() == [1, 1]  # the public rule: more than 12 GPT-2 tokens
    path = tmp_path / "own.jsonl"
    path.write_text('{"text": "good film", "label": "pos"}\n\n{"text": "bad film", "label": "neg"}\n')
    own = TextFile(str(path), seq_len=4).open()
    assert own.labels == [1, 0] and own.num_classes == 2  # class names in sorted order
    x, _ = own.encode([0])
    assert x[0, 2:].tolist() == [50256.0, 50256.0]  # padded with <|endoftext|>
    txt = tmp_path / "own.txt"
    txt.write_text("one line\nanother line that is longer than twelve tokens for sure, yes indeed it is\n")
    assert TextFile(str(txt)).open().labels == [0, 1]


@pytest.mark.parametrize("make, message", [
    (lambda p: BundledText(seq_len=0), "seq_len must be an integer >= 1"),
    (lambda p: TextFile(str(p / "missing.txt")).open(), "does not exist"),
    (lambda p: TextFile(str(p / "a.csv")).open(), "give a .txt file"),
    (lambda p: TextFile(str(p / "bad.jsonl")).open(), "bad.jsonl:1 is not JSON"),
    (lambda p: TextFile(str(p / "nolabel.jsonl")).open(), "has no 'label' field"),
    (lambda p: TextFile(str(p / "a.txt"), tokenizer=str(p / "nowhere")).open(), "tokenizer folder"),
])
def test_bad_text_input_is_one_line(tmp_path, make, message):
    (tmp_path / "a.csv").write_text("x\n")
    (tmp_path / "a.txt").write_text("x\n")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    (tmp_path / "nolabel.jsonl").write_text('{"text": "hi"}\n')
    with pytest.raises(ValueError, match=message) as err:
        make(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["gpt2_tiny", "bert_tiny"])
def test_the_wrapper_gives_the_transformers_logits_and_the_client_leaks_the_token_set(name):
    dm = VictimDataModule(source=BundledText(seq_len=16), num_victims=2, batch_size=2)
    model = build_model(name, dm.input_shape, dm.num_classes)
    secret = dm.load_victims()
    ids = secret.images[0].long()
    assert (ids == 50256).any()  # a padded sentence among them
    with torch.no_grad():
        ours = model(secret.images[0])
        theirs = model.model(input_ids=ids, attention_mask=(ids != 50256).long()).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    grads = client_gradients(model, secret.images, secret.labels)  # per victim, through torch.func.vmap
    emb = next(k for k in grads if k.endswith("word_embeddings.weight") or k.endswith("wte.weight"))
    for v in range(2):
        rows = set(grads[emb][v].abs().sum(-1).nonzero().flatten().tolist())
        real = secret.images[v][secret.images[v] != 50256].long()
        assert rows == set(real.tolist())  # the untied input embedding: exactly the batch's tokens


def test_a_text_model_for_the_wrong_data_is_one_line():
    with pytest.raises(ValueError, match="takes token sequences"):
        build_model("gpt2_tiny", (3, 32, 32), 10)


def test_a_text_run_writes_its_metrics(tmp_path, capsys):
    main(cli_args(tmp_path, "--config", str(CONFIGS / "text_tag.yaml"), "--trainer.max_steps", "10",
                  "--model.budget.refine_steps", "2", "--report.image_every_n_steps", "0"))
    out = capsys.readouterr().out
    assert "rouge1" in out and "true 0  ... with liberty and justice for all who" in out
    (run,) = run_dirs(tmp_path)
    report = json.loads((run / "metrics.json").read_text())
    assert 0 <= report["summary"]["rouge1_mean"] <= 1 and report["summary"]["victims"] == 1
    assert json.loads((run / "schema.json").read_text())["kind"] == "text"
    html = (run / "report.html").read_text()
    assert "liberty" in html and "ROUGE-1" in html


def test_a_text_source_with_an_image_model_is_one_line(tmp_path, capsys):
    line = cli_error(capsys, cli_args(tmp_path, "--config", str(CONFIGS / "text_tag.yaml"), "--model.model", "lenet"))
    assert "lenet" in line


def test_tags_distance_is_l2_plus_a_tenth_of_l1():
    from leakage.engine.losses import gradient_distance

    a, b = [torch.tensor([[1.0, -2.0]])], [torch.tensor([[0.0, 1.0]])]
    assert gradient_distance(a, b, "tag").item() == pytest.approx((1 + 9) + 0.1 * (1 + 3))


def test_the_token_set_attack_reads_every_token_of_the_batch(tmp_path, capsys):
    main(cli_args(tmp_path, "--config", str(CONFIGS / "text_tokens.yaml"), "--data.num_victims", "2",
                  "--report.image_every_n_steps", "0"))
    out = capsys.readouterr().out
    assert "token set: non-zero rows of the token embedding's gradient (exact where the update is undefended" in out
    (run,) = run_dirs(tmp_path)
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["token_precision_mean"] == 1.0 and summary["token_recall_mean"] == 1.0
    assert summary["exact_sequences_mean"] == 0.0  # positions unknown: no sentence comes back in order


def test_the_token_set_under_noise_needs_a_threshold():
    from leakage.attacks.tokenset import TokenSetAttack, token_sets

    dm = VictimDataModule(source=BundledText(seq_len=16), batch_size=2)
    attack = TokenSetAttack("gpt2_tiny", dm.input_shape, dm.num_classes)
    obs = dm.prepare(attack.target)
    name = "model.transformer.wte.weight"
    true = set(dm.secret.images[0][dm.secret.images[0] != 50256].long().tolist())
    noisy = {k: v + 1e-4 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) if k == name else v
             for k, v in obs.gradients.items()}
    from dataclasses import replace

    noisy_obs = replace(obs, gradients=noisy)
    assert len(token_sets(noisy_obs, attack.target)[0]) == 50257  # every row non-zero: the exact rule reads nothing
    read = set(token_sets(noisy_obs, attack.target, threshold=0.05)[0].tolist())
    assert read == true  # rows above 5% of the largest: the tokens again (this seed's noise)
    with pytest.raises(ValueError, match="threshold must be in"):
        TokenSetAttack("gpt2_tiny", (16,), 2, threshold=1.5)


def test_the_token_set_relaxation_pads_past_the_length_and_needs_the_sets():
    model = build_model("gpt2_tiny", (4,), 2)
    kind = TextKind(4, TextTokenizer()).bind(model).relaxed(True)
    with pytest.raises(ValueError, match="run it with the tag attack"):
        kind.initial(1, "randn", torch.Generator())
    kind = kind.with_token_sets(torch.tensor([[10, 20, -1]]), torch.tensor([2]))
    logits = kind.hard(torch.tensor([[1, 0, 0, 0]]))[None]  # [P=1, B=1, n=4, K=3]
    x = kind.to_input(logits)
    assert torch.equal(kind.decode(x), torch.tensor([[[20, 10, 50256, 50256]]]))
    assert torch.equal(x[0, 0, 2], model.embedding.weight[50256])  # exactly the pad embedding: padding to the model


def test_tag_recovers_a_sentence_exactly(tmp_path, capsys):
    main(cli_args(tmp_path, "--config", str(CONFIGS / "text_tag.yaml"), "--data.indices", "[5]",
                  "--data.source.seq_len", "6", "--trainer.max_steps", "60", "--model.budget.refine_steps", "15",
                  "--report.image_every_n_steps", "0"))
    out = capsys.readouterr().out
    (run,) = run_dirs(tmp_path)
    rows = json.loads((run / "metrics.json").read_text())
    summary = rows["summary"]
    assert summary["rouge1_mean"] == 1.0 and summary["exact_sequences_mean"] == 1.0, out
    assert "rec 0   : is not an identifier" in out
    assert summary["grad_l2_mean"] < 1e-6  # its update is the observed one (the token embedding's aside)


def test_tag_refuses_images_in_one_line(tmp_path, capsys):
    line = cli_error(capsys, cli_args(tmp_path, "--config", str(CONFIGS / "text_tag.yaml"), "--data.source", "Bundled",
                                      "--model.model", "lenet"))
    assert "text" in line


def test_your_own_model_and_tokenizer_folders_load_offline(tmp_path):
    from transformers import PreTrainedTokenizerFast

    from leakage.data.tokenizer import _bundled_bpe
    from leakage.engine.textmodels import PretrainedText

    built = build_model("bert_tiny", (8,), 3)
    built.model.save_pretrained(tmp_path / "model")
    own = PretrainedText(str(tmp_path / "model"), num_classes=3)
    ids = torch.tensor([[464.0, 3797, 3332, 50256, 50256, 50256, 50256, 50256]])
    with torch.no_grad():
        assert torch.allclose(own(ids), built(ids), atol=1e-5)  # the same weights, read back
    PreTrainedTokenizerFast(tokenizer_object=_bundled_bpe(), eos_token="<|endoftext|>").save_pretrained(tmp_path / "tok")
    tok = TextTokenizer(str(tmp_path / "tok"))
    assert tok.pad_token_id == 50256 and tok.decode(tok.encode("the cat sat")) == "the cat sat"
    with pytest.raises(ValueError, match="cannot read a sequence classifier"):
        PretrainedText(str(tmp_path / "tok"))


def test_tags_discrete_search_needs_the_token_set_relaxation(tmp_path, capsys):
    line = cli_error(capsys, cli_args(tmp_path, "--config", str(CONFIGS / "text_tag.yaml"), "--model.dummies.relax",
                                      "false"))
    assert "set dummies.relax true, or budget.refine_steps 0" in line



def test_tag_at_two_sentences_finds_each_ones_length(tmp_path, capsys):
    # a batch's position embedding gives only its longest length (5): the discrete search cuts the
    # shorter sentence (2 tokens) and exchanges tokens between the two
    text = tmp_path / "two.txt"
    text.write_text("the quick brown fox jumps\ngood morning\n")
    main(cli_args(tmp_path, "--config", str(CONFIGS / "text_tag.yaml"), "--data.source", "TextFile",
                  "--data.source.path", str(text), "--data.source.seq_len", "5", "--data.batch_size", "2",
                  "--model.labels", "known", "--data.public_labels", "true", "--trainer.max_steps", "60",
                  "--report.image_every_n_steps", "0"))
    out = capsys.readouterr().out
    (run,) = run_dirs(tmp_path)
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["exact_sequences_mean"] == 1.0, out
    assert "good morning" in out.split("rec 0")[-1], out
