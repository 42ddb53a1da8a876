"""LAMP on text: the bigram prior fitted on held-out public text, and the attack whose discrete search
adds it to the gradient distance."""

from __future__ import annotations

import json
import random

import pytest
import torch

from leakage.attacks.lamp import LAMP, REPRODUCES, LampObjective
from leakage.attacks.ngram import BigramPrior, prior_lines
from leakage.cli import main
from leakage.data.datamodule import VictimDataModule
from leakage.data.sources import BundledText
from leakage.data.tokenizer import TextTokenizer

from conftest import CONFIGS, cli_args, cli_error, run_dirs


def test_the_prior_ranks_a_true_fortune_above_its_shuffled_tokens():
    tok = TextTokenizer()
    prior = BigramPrior([tok.encode(line) for line in prior_lines(None)], tok.vocab_size)
    lines = (CONFIGS.parent / "leakage" / "assets" / "text" / "fortunes_0_999.txt").read_text().splitlines()
    assert lines[500] == prior_lines(None)[0]  # the default prior is fortunes 500-999: the victims 0-499 stay out
    wins = total = 0
    for i in range(40):  # victims the prior never saw
        ids = tok.encode(lines[i])[:8]
        shuffled = ids[:]
        random.Random(i).shuffle(shuffled)
        if shuffled != ids:
            total += 1
            wins += int(prior.nll(torch.tensor(ids)) < prior.nll(torch.tensor(shuffled)))
    assert wins >= 0.75 * total, (wins, total)
    assert float(prior.nll(torch.tensor(tok.encode(lines[4])[:8]))) < float(
        prior.nll(torch.tensor(tok.encode(lines[4])[:8][::-1])))


def test_lamp_recovers_a_sentence(tmp_path, capsys):
    main(cli_args(tmp_path, "--config", str(CONFIGS / "text_lamp.yaml"), "--data.indices", "[5]",
                  "--data.source.seq_len", "6", "--trainer.max_steps", "60", "--model.budget.refine_steps", "15",
                  "--report.image_every_n_steps", "0"))
    out = capsys.readouterr().out
    (run,) = run_dirs(tmp_path)
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["rouge1_mean"] >= 0.9, out


def test_lamps_bad_settings_are_one_line_errors(tmp_path, capsys):
    config = str(CONFIGS / "text_lamp.yaml")
    line = cli_error(capsys, cli_args(tmp_path, "--config", config, "--model.objective.prior_weight", "-1"))
    assert "prior_weight must be >= 0" in line
    line = cli_error(capsys, cli_args(tmp_path, "--config", config, "--model.objective.prior_text",
                                      str(tmp_path / "missing.txt")))
    assert "prior_text" in line and "does not exist" in line
    line = cli_error(capsys, cli_args(tmp_path, "--config", config, "--model.budget.refine_steps", "0"))
    assert "set budget.refine_steps > 0, or use the tag attack" in line


def _attached_lamp(prior_weight: float, sentence: int = 0):
    """LAMP attached to one update of one bundled sentence (8 tokens), put in its discrete stage, with the
    true sequence as candidate indices ``[1, B=1, n]``."""
    dm = VictimDataModule(source=BundledText(seq_len=8), indices=[sentence], batch_size=1)
    attack = LAMP(input_shape=dm.input_shape, num_classes=dm.num_classes,
                  objective=LampObjective(distance="tag", prior_weight=prior_weight))
    attack.attach(dm.prepare(attack.target))
    kind = attack.kind
    candidates = kind.candidates[0].tolist()
    truth = torch.tensor([[candidates.index(int(t)) for t in dm.secret.images[0][0].long()]])
    with torch.no_grad():
        attack.dummy_data.copy_(kind.hard(truth)[None])
        attack._free = kind.harden_(attack.dummy_data)  # the discrete stage: hard tokens, nothing free (as start_refining)
    attack.own_lengths()
    return attack, truth


def _distance(attack, choice):
    with torch.no_grad():
        return attack._objective(attack.kind.hard(choice)[None], None, torch.tensor([0]))


@pytest.mark.parametrize("prior_weight", [0.0, 0.01])
def test_the_prior_decides_which_of_two_near_equal_sequences_is_reported(prior_weight):
    attack, truth = _attached_lamp(prior_weight, sentence=4)
    reverse = truth.flip(-1)
    prior, ids = attack.language_prior(), attack.kind.candidates[0]
    assert float(prior.nll(ids[reverse])) > float(prior.nll(ids[truth])) + 0.2  # the prior prefers the true order
    d = float(_distance(attack, reverse))
    assert d > 1e-3 * float(attack.distance_scale()[0])  # the reverse's update is not the observed one
    # the reverse offered at a distance, then the true order at a distance 0.1 percent larger (neither reproduces it)
    for choice, loss in ((reverse, d), (truth, 1.001 * d)):
        attack.best.offer(torch.tensor([loss]), (attack.kind.hard(choice)[None],))
    reported = attack.kind.tokens(attack.best.point[0])[0]
    # TAG's report (weight 0) keeps the lower distance; LAMP's the lower distance + prior
    assert torch.equal(reported, truth if prior_weight > 0 else reverse)


def test_a_sequence_whose_update_reproduces_the_observed_one_beats_any_the_prior_prefers():
    attack, truth = _attached_lamp(10.0)  # a weight at which the prior would outweigh any relative distance
    prior, ids, L = attack.language_prior(), attack.kind.candidates[0], 8
    moves = attack._proposals(truth, int((ids >= 0).sum()), L)  # [N, B, n]
    nll = prior.nll(ids[moves])[:, 0]
    better = moves[int(nll.argmin())]  # the truth one move away, that the prior likes better
    assert float(nll.min()) < float(prior.nll(ids[truth]))
    d_true, d_better = _distance(attack, truth), _distance(attack, better)
    scale = attack.distance_scale()[0]
    assert float(d_true) <= REPRODUCES * float(scale) < float(d_better)  # only the truth reproduces the update
    # by relative distance + prior alone the other would win
    assert 10.0 * float(prior.nll(ids[truth]) - nll.min()) > float(d_better / scale)
    scores = attack.sequence_score(0, torch.cat([d_true, d_better]), torch.cat([truth[None], better[None]]))
    assert float(scores[0]) < float(scores[1])
    # and the search keeps it: no move away from the truth lowers the score
    attack.discrete_step()
    assert torch.equal(attack.kind.tokens(attack.dummy_data)[0], truth)
