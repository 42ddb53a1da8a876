"""Decepticons (a malicious server for transformers) on a GPT-2 classifier: ROUGE-1/2 and CPU seconds per batch.

The client: the package's GPT-2 classifier (:func:`leakage.engine.textmodels.text_model`, random init from seed
0, 2 classes, the bundled GPT-2 BPE's 50,257 tokens; ``--model gpt2_small``: width 768, 12 blocks, 12
heads; ``bert_base``: BERT base's size), rewritten by :class:`leakage.federated.decepticons.DecepticonServer` (imprints in the first
``--blocks`` blocks, ``--directions`` directions each, the MLP's width shared out as bins). Its batch: B
rows of n tokens, each filled with consecutive bundled fortunes (``leakage/assets/text/fortunes_0_999.txt``)
joined by spaces and cut to n tokens (so every row holds n real tokens, as breaching's 512-token
wikitext rows do); row b starts at fortune 40 b. It shares the batch-mean cross-entropy gradient (labels
alternating 0/1); the bench takes only the imprinted layers' gradients (the same values as the full
update's). The attack: :func:`leakage.attacks.decepticons.decode_update`.

Columns: B x n; real tokens; ROUGE-1/2: F-measures (``rouge-score``) of the recovered rows paired to the
true ones (Hungarian algorithm on their sum), mean over the batch; token recall: true (position, token)
pairs recovered in the paired row; clean: the read-out's own verdict (B groups, no position missing or
doubled); CPU seconds of the server's rewrite, the client's gradient and the attack (one thread); and
breaching's saved Decepticons figures (Fowl, Geiping et al., ICLR 2023: GPT-2, wikitext, 8 x 512: ROUGE-1
0.87, ROUGE-2 0.72; BERT 1 x 512: 0.97 / 0.85).

    python bench/decepticons.py [--model gpt2_small] [--sizes 1x32,1x128,8x128,8x512] [--blocks 11]
    python bench/decepticons.py --model bert_base --sizes 1x128,1x512
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leakage.attacks.decepticons import decode_update  # noqa: E402
from leakage.data.kinds.text import rouge  # noqa: E402
from leakage.data.tokenizer import TextTokenizer  # noqa: E402
from leakage.engine.textmodels import GPT2_PAD, text_model  # noqa: E402
from leakage.federated.decepticons import DecepticonServer  # noqa: E402

TEXT = Path(__file__).resolve().parents[1] / "leakage" / "assets" / "text" / "fortunes_0_999.txt"
BREACHING = {"gpt2 8x512": (0.87, 0.72), "bert 1x512": (0.97, 0.85)}


def rows(tok: TextTokenizer, B: int, n: int) -> torch.Tensor:
    lines = [ln for ln in TEXT.read_text(encoding="utf-8").splitlines() if ln.strip()]
    out = []
    for b in range(B):
        ids, i = [], 40 * b
        while len(ids) < n:
            ids += tok.encode((" " if ids else "") + lines[i % len(lines)])
            i += 1
        out.append(ids[:n])
    return torch.tensor(out)


def paired_scores(tok: TextTokenizer, true: torch.Tensor, got: torch.Tensor) -> tuple[float, float, float]:
    from scipy.optimize import linear_sum_assignment

    B = true.shape[0]
    t_txt = [tok.decode([i for i in r.tolist() if i != GPT2_PAD]) for r in true]
    g_txt = [tok.decode([i for i in r.tolist() if i != GPT2_PAD]) for r in got]
    sc = [[rouge(t_txt[a], g_txt[b]) for b in range(B)] for a in range(B)]
    cost = torch.tensor([[-(s["rouge1"] + s["rouge2"]) for s in row] for row in sc])
    ra, rb = linear_sum_assignment(cost.numpy())
    r1 = sum(sc[a][b]["rouge1"] for a, b in zip(ra, rb)) / B
    r2 = sum(sc[a][b]["rouge2"] for a, b in zip(ra, rb)) / B
    recall = sum(float((true[a] == got[b]).float().mean()) for a, b in zip(ra, rb)) / B
    return r1, r2, recall


def run(model_name: str, B: int, n: int, blocks: int, directions: int) -> None:
    tok = TextTokenizer()
    ids = rows(tok, B, n)
    torch.manual_seed(0)
    model = text_model(model_name, n, 2)
    server = DecepticonServer(blocks=blocks, directions=directions)
    c0 = time.process_time()
    sent = server.send(model, (n,))
    c1 = time.process_time()
    lay = server.layout()
    names = sorted({f"{layer}.{s}" for layer, _ in lay["layers"] for s in ("weight", "bias")})
    params = dict(sent.named_parameters())
    loss = torch.nn.functional.cross_entropy(sent(ids), torch.arange(B) % 2)
    grads = dict(zip(names, torch.autograd.grad(loss, [params[k] for k in names])))
    c2 = time.process_time()
    got, clean, notes = decode_update(lay, grads, B, n, GPT2_PAD)
    c3 = time.process_time()
    r1, r2, recall = paired_scores(tok, ids, got)
    ref = BREACHING.get(f"{model_name[:4]} {B}x{n}")
    ref_txt = f"{ref[0]:.2f} / {ref[1]:.2f}" if ref else "-"
    print(f"| {B} x {n} | {B * n} | {r1:.3f} | {r2:.3f} | {recall:.3f} | {clean} | {c1 - c0:.1f} | {c2 - c1:.1f} | "
          f"{c3 - c2:.1f} | {ref_txt} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2_small")
    ap.add_argument("--sizes", default="1x32,1x128,8x128,8x512")
    ap.add_argument("--blocks", type=int, default=11)
    ap.add_argument("--directions", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"model {args.model}, imprints in {args.blocks} blocks x {args.directions} directions; CPU seconds, one thread")
    print("| B x n | tokens | ROUGE-1 | ROUGE-2 | token recall | clean | server s | client s | attack s | breaching R-1 / R-2 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        B, n = (int(v) for v in size.split("x"))
        run(args.model, B, n, args.blocks, args.directions)


if __name__ == "__main__":
    main()
