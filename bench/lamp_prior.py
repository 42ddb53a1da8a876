"""How much LAMP's bigram prior (configs/text_lamp.yaml's, fitted on the bundled fortunes 500-999) can tell
the true batch from its neighbours, one thread, no search.

    python bench/lamp_prior.py                      # B = 1, 2, 4; 4 updates each; sentences cut to 8 tokens
    python bench/lamp_prior.py --updates 10 --batch-sizes 1

For each update of B bundled sentences (sentences 0 onward, consecutive, as bench/text_tag.py takes
them; first, how many of the victims' bigrams the prior's text holds; an update holding a sentence shorter than the others is left out, as the search cannot write
its padding) it takes the true batch as candidate indices of the update's token set and every sequence one
discrete move away (TAG's and LAMP's swaps and replacements), and prints: the true batch's NLL per
token and log V (a uniform model's); the share of neighbours the prior scores at least as likely as
the truth; the neighbours' relative gradient distances (over the distance of a zero update); and, per
prior weight, the share of neighbours whose relative distance + weight x NLL is below the truth's (the
neighbours that LAMP's score would prefer to the truth were it not for the rule that a sequence whose
update reproduces the observed one wins).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from leakage.attacks.lamp import LAMP, LampObjective  # noqa: E402
from leakage.attacks.ngram import BigramPrior, prior_lines  # noqa: E402
from leakage.data.datamodule import VictimDataModule  # noqa: E402
from leakage.data.sources import BundledText  # noqa: E402
from leakage.data.tokenizer import TextTokenizer  # noqa: E402


def coverage(seq_len: int, victims: int = 100) -> None:
    """The prior's text in tokens, and how many bigrams of the first ``victims`` sentences it holds."""
    tok = TextTokenizer()
    prior = BigramPrior([tok.encode(line) for line in prior_lines(None)], tok.vocab_size)
    size = sum(len(tok.encode(line)) for line in prior_lines(None))
    text = (Path(__file__).resolve().parents[1] / "leakage" / "assets" / "text" / "fortunes_0_999.txt").read_text()
    seen = total = 0
    for line in [ln for ln in text.splitlines() if ln.strip()][:victims]:
        ids = tok.encode(line)[:seq_len]
        for prev, nxt in zip([prior.start] + ids[:-1], ids):
            key = torch.tensor(prev * (prior.V + 1) + nxt)
            i = int(torch.searchsorted(prior.keys, key))
            seen, total = seen + int(i < prior.keys.numel() and bool(prior.keys[i] == key)), total + 1
    print(f"prior text: fortunes 500-999, {size} tokens, {prior.keys.numel()} distinct bigrams; of the {total} bigrams "
          f"of sentences 0-{victims - 1} cut to {seq_len} tokens (the start included), {seen} occur in it")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--updates", type=int, default=4)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--seq-len", type=int, default=8)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.001, 0.01, 0.1])
    args = ap.parse_args()
    torch.set_num_threads(1)
    coverage(args.seq_len)
    for B in args.batch_sizes:
        dm = VictimDataModule(source=BundledText(seq_len=args.seq_len), num_victims=args.updates, batch_size=B,
                              public_labels=True)
        attack = LAMP(input_shape=dm.input_shape, num_classes=dm.num_classes, labels="known",
                      objective=LampObjective(distance="tag"))
        attack.attach(dm.prepare(attack.target))
        kind, prior = attack.kind, attack.language_prior()
        rows = []
        for p in range(attack.num_problems):
            cand = kind.candidates[p]
            K, L = int((cand >= 0).sum()), int(kind.lengths[p])
            ids = dm.secret.images[p].long()[:, :L]
            if not all(int(t) in cand.tolist() for t in ids.flatten()):  # a padded sequence: the search cannot write it
                continue
            truth = torch.full((B, args.seq_len), -1, dtype=torch.long)  # past the length: padding
            truth[:, :L] = torch.tensor([[cand.tolist().index(int(t)) for t in seq] for seq in ids])
            moves = attack._proposals(truth, K, L)  # the truth first, then every sequence a move away
            with torch.no_grad():
                d = attack._move_losses(p, moves).double()
            rel = d / attack.distance_scale()[p].double()
            nll = prior.nll(cand[moves.clamp_min(0)], (moves >= 0).sum(-1)).mean(-1)
            rows.append((float(nll[0]), float(rel[0]), nll[1:], rel[1:]))
        n = sum(r[2].numel() for r in rows)
        likelier = sum(int((r[2] <= r[0]).sum()) for r in rows) / n
        rel_all = torch.cat([r[3] for r in rows])
        print(f"B = {B}, {len(rows)} of {args.updates} updates (the others hold a padded sentence), seq_len {args.seq_len}: truth NLL per token "
              f"{sum(r[0] for r in rows) / len(rows):.2f} nats (log V {math.log(prior.V):.2f}), its relative distance "
              f"at most {max(r[1] for r in rows):.1e}; {n} neighbours: {100 * likelier:.0f} % as likely as the truth "
              f"or more under the prior; relative distance min {float(rel_all.min()):.4f}, median "
              f"{float(rel_all.median()):.4f}")
        for w in args.weights:
            beat = sum(int((r[3] + w * r[2] < r[1] + w * r[0]).sum()) for r in rows)
            print(f"  weight {w:g}: {beat} of {n} neighbours ({100 * beat / n:.1f} %) score below the truth by "
                  "relative distance + weight x NLL")


if __name__ == "__main__":
    main()
