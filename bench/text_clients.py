"""What a text update still leaks when the client trains less: frozen embeddings, LoRA adapters, a tied embedding.

Sections (``--sections``, default all):

- ``tied``: the token set's thresholded rule on a GPT-2 whose output layer is its token embedding
  (:func:`leakage.engine.textmodels.tied_text_model`, ``gpt2_tiny`` at random init, seed 0): the first ``B``
  bundled sentences (``BundledText``, ``--seq-len`` tokens), FedSGD, labels = the bundled rule's classes; for
  each threshold (a fraction of the largest row norm), the rule's precision and recall of the batch's
  distinct tokens (pad excepted), mean over ``--victims`` batches (consecutive sentences).
- ``frozen``: ``gpt2_tiny`` (seed 1234) whose client freezes ``wte`` and ``wpe``: which entries the update
  holds, what the token set says, and TAG's continuous search on free input embeddings (no token set:
  ``dummies.relax false``, ``budget.refine_steps 0``) on the full update and on the frozen-embedding update.
- ``lora``: DAGER on a GPT-2 classifier (``--d``, ``--layers``; default GPT-2 small's size) with LoRA
  adapters (``peft``, rank ``--ranks``) on every block's ``c_attn``, the client sharing only the adapters
  and the head: DAGER's span test on block 0 and 1's LoRA A gradients, exact sequences at ``--sizes``.
  The adapters are "trained": ``B`` drawn at random (std ``--b-std``), as after earlier rounds; at PEFT's own
  initialisation (``B = 0``) the A gradient is exactly zero, which the first row shows.

    python bench/text_clients.py [--sections tied,frozen,lora] [--sizes 1,8,32] [--ranks 8,64,256]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leakage.attacks.tokenset import embedding_names, token_sets  # noqa: E402
from leakage.data.sources import BundledText  # noqa: E402
from leakage.engine.textmodels import tied_text_model  # noqa: E402
from leakage.federated.client import client_gradients  # noqa: E402
from leakage.records import Observation  # noqa: E402


def batch(corpus, start: int, B: int):
    x, y = corpus.encode(range(start, start + B))
    return x, y


def tied(args) -> None:
    corpus = BundledText(seq_len=args.seq_len).open()
    torch.manual_seed(0)
    model = tied_text_model("gpt2_tiny", args.seq_len)
    name = embedding_names(model)[0]
    pad = corpus.kind.pad_token_id
    thresholds = [float(t) for t in args.thresholds.split(",")]
    print(f"tied gpt2_tiny (GPT2LMHeadModel, tie_word_embeddings), seq_len {args.seq_len}, {args.victims} batches each")
    print(f"{'B':>3} {'threshold':>9} {'precision':>9} {'recall':>7} {'exact sets':>10}  (true distinct tokens, mean)")
    for B in [int(b) for b in args.tied_sizes.split(",")]:
        xs, ys = zip(*(batch(corpus, v * B, B) for v in range(args.victims)))
        x, y = torch.stack(xs), torch.stack(ys)
        grads = client_gradients(model, x, y)
        obs = Observation({name: grads[name]}, B, (args.seq_len,), 50257, kind=None)
        truth = [set(x[v].long().flatten().tolist()) - {pad} for v in range(args.victims)]
        for t in thresholds:
            sets = token_sets(obs, model, t)
            prec, rec, exact = [], [], 0
            for v, s in enumerate(sets):
                got = set(s.tolist()) - {pad}
                hit = len(got & truth[v])
                prec.append(hit / max(len(got), 1))
                rec.append(hit / len(truth[v]))
                exact += got == truth[v]
            print(f"{B:>3} {t:>9g} {sum(prec) / len(prec):>9.3f} {sum(rec) / len(rec):>7.3f} "
                  f"{exact:>5}/{args.victims:<4}  ({sum(len(s) for s in truth) / len(truth):.1f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="tied,frozen,lora")
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--victims", type=int, default=5)
    ap.add_argument("--tied-sizes", default="1,4,8")
    ap.add_argument("--thresholds", default="0,0.001,0.01,0.05,0.1,0.2")
    ap.add_argument("--sizes", default="1,8,32")
    ap.add_argument("--ranks", default="8,64,256")
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--b-std", type=float, default=0.02)
    ap.add_argument("--tag-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sections = args.sections.split(",")
    for name in ("tied", "frozen", "lora"):
        if name in sections:
            globals()[name](args)
            print()


if __name__ == "__main__":
    main()
