"""DAGER on a GPT-2-small-size decoder: exact sequences, ROUGE-1/2 and seconds per batch, and where it stops.

The client: ``transformers``' ``GPT2ForSequenceClassification`` built from a config at random
initialisation (seed 0; d = 768, 12 blocks, 12 heads, the full 50,257-token BPE vocabulary, no dropout,
2 classes), in eval mode; its batch: bundled sentences (``leakage/assets/text/fortunes_0_999.txt``,
the GPT-2 BPE bundled beside it), right-padded with the end-of-text token, labels alternating 0/1; it shares
the cross-entropy gradient averaged over the batch (the bench computes only the two weight gradients DAGER
reads, blocks 0 and 1's ``c_attn``: the same values as the full update's).

Rows:

- ``--sizes`` (default 1,2,8,16,32): the first B sentences at their real lengths;
- ``--saturation`` (default 64x12,68x12,70x12,72x12,76x12): B sentences of at least n tokens, cut to n, so
  the batch holds exactly B*n tokens and 680 to 819 distinct prefixes, around the hidden size d = 768 (the
  span test's limit: block 1's inputs are one per distinct prefix, and an untrained LayerNorm's outputs
  fill at most d - 1 = 767 dimensions).

Columns: tokens in the batch; distinct prefixes (block 1's distinct inputs); the two spans' ranks; exact:
sequences recovered token for token AND proven exact by the attack (:func:`leakage.attacks.dager_search.dager_decoder`), in % of the batch; recovered: sequences
equal to a true one, proven or not; ROUGE-1/2: F-measures (``rouge-score``) of the recovered sentences
paired to the true ones (Hungarian algorithm), mean over the batch; seconds of the attack (one thread
unless ``--threads``), wall and CPU.

Then a BERT classifier of BERT base's size (d = 768, 12 layers; ``--encoder-d``) at random
initialisation, batches of 1 or 2 (``--encoder``, default 1,2x8,2x12: one sentence at its real length,
two cut to 8 and to 12 tokens), by :func:`leakage.attacks.dager_encoder.dager_encoder` (whole candidate
sequences; the "prefix" column then counts distinct sequences' positions as for the decoder).

    python bench/dager.py [--sizes 1,2,8,16,32] [--saturation 58x12,64x12] [--d 768 --layers 12] [--encoder 1,2x8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leakage.attacks.dager_encoder import EncoderLayers, dager_encoder  # noqa: E402
from leakage.attacks.dager_search import DecoderLayers, dager_decoder  # noqa: E402

TEXT = Path(__file__).resolve().parents[1] / "leakage" / "assets" / "text"  # the bundled sentences and GPT-2 BPE


def build(d: int, layers: int, seed: int = 0):
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2TokenizerFast

    tok = GPT2TokenizerFast(vocab=str(TEXT / "encoder.json"), merges=str(TEXT / "vocab.bpe"))
    tok.pad_token = tok.eos_token
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=d, n_layer=layers, n_head=max(1, d // 64), n_positions=256,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, num_labels=2, pad_token_id=tok.eos_token_id)
    return tok, GPT2ForSequenceClassification(cfg).eval()


def build_encoder(d: int, layers: int, seed: int = 0):
    """A BERT classifier of width ``d`` at random initialisation over the bundled BPE, no dropout."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50257, hidden_size=d, num_hidden_layers=layers, num_attention_heads=max(1, d // 64),
                     intermediate_size=4 * d, max_position_embeddings=256, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, num_labels=2, pad_token_id=50256)
    return BertForSequenceClassification(cfg).eval()


def shared_gradients(model, enc, names) -> dict:
    """The client's batch-mean cross-entropy gradient of the two weights DAGER reads."""
    params = dict(model.named_parameters())
    y = torch.arange(enc.input_ids.shape[0]) % 2
    loss = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=y).loss
    return dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))


def rouge(true: list[str], got: list[str]) -> tuple[float, float]:
    """Mean ROUGE-1 and ROUGE-2 F-measures of ``got`` paired to ``true`` (Hungarian on their sum)."""
    from rouge_score import rouge_scorer
    from scipy.optimize import linear_sum_assignment

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2"])
    s = torch.zeros(len(true), len(got), 2, dtype=torch.float64)
    for i, t in enumerate(true):
        for j, g in enumerate(got):
            r = scorer.score(t, g)
            s[i, j, 0], s[i, j, 1] = r["rouge1"].fmeasure, r["rouge2"].fmeasure
    rows, cols = linear_sum_assignment(-(s.sum(2)).numpy())
    total = s[torch.as_tensor(rows), torch.as_tensor(cols)].sum(0) / len(true)
    return float(total[0]), float(total[1])


def row(tok, model, lines: list[str], n: int | None, encoder: bool = False) -> dict:
    enc = tok(lines, padding=True, truncation=n is not None, max_length=n, return_tensors="pt")
    grads = shared_gradients(model, enc, (EncoderLayers if encoder else DecoderLayers)(model).grad_names)
    truth = [ids[m.bool()].tolist() for ids, m in zip(enc.input_ids, enc.attention_mask)]
    wall, cpu = time.perf_counter(), time.process_time()
    res = (dager_encoder if encoder else dager_decoder)(model, grads, len(lines), enc.input_ids.shape[1],
                                                        pad_token_id=tok.eos_token_id)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    left = list(truth)
    recovered = exact = 0
    for seq, proven in zip(res.sequences, res.exact):
        if seq in left:
            left.remove(seq)
            recovered += 1
            exact += bool(proven)
    r1, r2 = rouge([tok.decode(t) for t in truth], [tok.decode(s) for s in res.sequences])
    prefixes = len({tuple(t[: i + 1]) for t in truth for i in range(len(t))})
    return dict(B=len(lines), tokens=int(enc.attention_mask.sum()), prefixes=prefixes, ranks=res.ranks,
                exact=100 * exact / len(lines), recovered=100 * recovered / len(lines), r1=r1, r2=r2, wall=wall, cpu=cpu,
                note=res.notes[0] if res.notes else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,2,8,16,32")
    ap.add_argument("--saturation", default="64x12,68x12,70x12,72x12,76x12")
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--encoder", default="1,2x8,2x12", help="BERT rows: B or BxN (B of 1 or 2)")
    ap.add_argument("--encoder-d", type=int, default=768)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok, model = build(args.d, args.layers)
    lines = (TEXT / "fortunes_0_999.txt").read_text().splitlines()
    cases = [(int(b), None) for b in args.sizes.split(",") if b]
    cases += [tuple(int(v) for v in c.split("x")) for c in args.saturation.split(",") if c]
    print(f"GPT-2 random init: d={args.d}, {args.layers} blocks, vocabulary {len(tok)}; {args.threads} thread(s)")
    table(tok, model, lines, cases, False)
    cases = [tuple(int(v) for v in c.split("x")) if "x" in c else (int(c), None) for c in args.encoder.split(",") if c]
    if cases:
        print(f"\nBERT random init: d={args.encoder_d}, 12 layers, vocabulary 50257; {args.threads} thread(s)")
        table(tok, build_encoder(args.encoder_d, 12), lines, cases, True)


def table(tok, model, lines: list[str], cases: list[tuple], encoder: bool) -> None:
    print(f"{'B':>4} {'n':>5} {'tokens':>6} {'prefix':>6} {'ranks':>10} {'exact%':>7} {'recov%':>7} {'ROUGE-1':>8} "
          f"{'ROUGE-2':>8} {'wall s':>7} {'cpu s':>7}  note")
    for B, n in cases:
        pool = lines if n is None else [s for s in lines if len(tok(s).input_ids) >= n]
        if len(pool) < B:
            print(f"{B:>4} {n!s:>5}  only {len(pool)} sentences have {n} tokens: skipped")
            continue
        r = row(tok, model, pool[:B], n, encoder)
        print(f"{r['B']:>4} {'real' if n is None else n:>5} {r['tokens']:>6} {r['prefixes']:>6} {str(r['ranks']):>10} "
              f"{r['exact']:>7.1f} {r['recovered']:>7.1f} {r['r1']:>8.3f} {r['r2']:>8.3f} {r['wall']:>7.1f} "
              f"{r['cpu']:>7.1f}  {r['note'][:90]}", flush=True)


if __name__ == "__main__":
    main()
