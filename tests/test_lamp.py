"""LAMP on text: the bigram prior fitted on held-out public text, and the attack whose discrete search
adds it to the gradient distance."""

from __future__ import annotations

import json
import random

import torch

from leakage.attacks.ngram import BigramPrior, prior_lines
from leakage.cli import main
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
