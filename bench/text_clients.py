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
- ``lora_tag``: TAG and the free-embedding search on ``LoraText`` (``gpt2_tiny``, rank 8, trained adapters): the
  full update, and the adapters and head only (``trainable [lora_, score]``).

    python bench/text_clients.py [--sections tied,frozen,lora_tag,lora] [--sizes 1,8,32] [--ranks 8,64,256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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


ROOT = Path(__file__).resolve().parents[1]


def fit(args, extra: list[str]) -> dict:
    """One ``leakage fit`` of configs/text_tag.yaml with ``extra`` overrides (one thread); its summary."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "leakage.cli", "fit", "--config", str(ROOT / "configs" / "text_tag.yaml"),
               "--trainer.logger.init_args.save_dir", tmp, "--report.image_every_n_steps", "0",
               "--data.source.seq_len", str(args.tag_len), "--trainer.max_steps", str(args.tag_steps), *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        runs = sorted(Path(tmp).glob("*/version_*/metrics.json"))
        if not runs:
            lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.startswith("leakage: error")]
            return {"error": lines[-1] if lines else (done.stderr.strip().splitlines() or ["?"])[-1]}
        return json.loads(runs[-1].read_text())["summary"]


def frozen(args) -> None:
    from leakage.data.datamodule import VictimDataModule
    from leakage.engine.models import build_model
    from leakage.federated.client import FedSGD

    model = build_model("gpt2_tiny", (args.tag_len,), 2, seed=1234)
    dm = VictimDataModule(source=BundledText(seq_len=args.tag_len), client=FedSGD(freeze=["wte", "wpe"]), batch_size=1)
    obs = dm.prepare(model)
    everything = [n for n, _ in model.named_parameters()]
    print(f"gpt2_tiny, client freeze [wte, wpe]: the update holds {len(obs.gradients)} of {len(everything)} entries; "
          f"missing {[n for n in everything if n not in obs.gradients]}")
    print(f"TAG on gpt2_tiny, B = 1, sentences {args.tag_indices} cut to {args.tag_len} tokens, {args.tag_steps} steps")
    rows = [("TAG (token set + discrete search), full update", []),
            ("TAG (token set + discrete search), frozen embeddings", ["--data.client.freeze", "[wte, wpe]"]),
            ("free embeddings, no token set, full update", ["--attack", "gradient_inversion", "--model.dummies.relax",
                                                            "false", "--model.budget.refine_steps", "0"]),
            ("free embeddings, no token set, frozen embeddings", ["--attack", "gradient_inversion",
                                                                  "--model.dummies.relax", "false",
                                                                  "--model.budget.refine_steps", "0",
                                                                  "--data.client.freeze", "[wte, wpe]"])]
    tag_table(args, rows)


def lora_tag(args) -> None:
    lora = ["--model.model", "leakage.engine.lora.LoraText", "--model.model.base", "gpt2_tiny", "--model.model.seq_len",
            str(args.tag_len), "--model.model.rank", "8", "--model.model.adapter_std", str(args.b_std)]
    free = ["--attack", "gradient_inversion", "--model.dummies.relax", "false", "--model.budget.refine_steps", "0"]
    print(f"gpt2_tiny with LoRA (rank 8, B ~ N(0, {args.b_std})) on c_attn, B = 1, sentences {args.tag_indices} cut to "
          f"{args.tag_len} tokens, {args.tag_steps} steps")
    tag_table(args, [("TAG, LoRA model, full update", lora),
                     ("free embeddings, LoRA model, full update", [*lora, *free]),
                     ("free embeddings, adapters + head only", [*lora, *free, "--data.client.trainable",
                                                                "[lora_, score]"])])


def tag_table(args, rows) -> None:
    print(f"{'run':<52} {'ROUGE-1':>8} {'token acc':>9} {'exact':>6}  per sentence")
    for label, extra in rows:
        got = [fit(args, [*extra, "--data.indices", f"[{i}]"]) for i in args.tag_indices.split(",")]
        if "error" in got[0]:
            print(f"{label:<52} {got[0]['error'][:150]}", flush=True)
            continue
        mean = lambda k: sum(g[k] for g in got) / len(got)  # noqa: E731
        print(f"{label:<52} {mean('rouge1_mean'):>8.3f} {mean('token_accuracy_mean'):>9.3f} "
              f"{mean('exact_sequences_mean'):>6.2f}  ROUGE-1 {[round(g['rouge1_mean'], 3) for g in got]}", flush=True)


def lora_grads(model, enc, names) -> dict:
    """The LoRA client's batch-mean cross-entropy gradient of ``names`` (what DAGER reads of its update)."""
    params = dict(model.named_parameters())
    y = torch.arange(enc.input_ids.shape[0]) % 2
    loss = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=y).loss
    return dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))


def lora(args) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    sys.path.insert(0, str(ROOT / "bench"))
    from dager import build, rouge  # bench/dager.py's GPT-2 (seed 0) and ROUGE pairing

    from leakage.attacks.dager_search import DecoderLayers, dager_decoder

    lines = (ROOT / "leakage" / "assets" / "text" / "fortunes_0_999.txt").read_text().splitlines()
    print(f"DAGER on LoRA-only updates: GPT-2 random init d={args.d}, {args.layers} blocks; LoRA on every c_attn "
          f"(alpha = 2r, B ~ N(0, {args.b_std}) unless fresh); the first B bundled sentences at their real lengths")
    print(f"{'r':>4} {'B':>3} {'tokens':>6} {'ranks':>10} {'exact%':>7} {'ROUGE-1':>8} {'cpu s':>6}  note")
    for r in [int(v) for v in args.ranks.split(",")]:
        for std in ([0.0] if r == int(args.ranks.split(",")[0]) else []) + [args.b_std]:
            tok, model = build(args.d, args.layers)
            torch.manual_seed(1)
            model = inject_adapter_in_model(LoraConfig(r=r, lora_alpha=2 * r, target_modules=["c_attn"],
                                                       lora_dropout=0.0, fan_in_fan_out=True), model)
            if std > 0:
                for n, p in model.named_parameters():
                    if "lora_B" in n:
                        torch.nn.init.normal_(p, std=std)
            layers = DecoderLayers(model)
            names = [n for group in layers.lora_names for n in group]
            for B in [int(b) for b in args.sizes.split(",")]:
                enc = tok(lines[:B], padding=True, return_tensors="pt")
                grads = lora_grads(model, enc, names)
                truth = [ids[m.bool()].tolist() for ids, m in zip(enc.input_ids, enc.attention_mask)]
                cpu = time.process_time()
                try:
                    res = dager_decoder(model, grads, B, enc.input_ids.shape[1], pad_token_id=tok.eos_token_id)
                except ValueError as err:
                    print(f"{r:>4} {B:>3} {int(enc.attention_mask.sum()):>6} {'fresh B=0':>10}  {str(err)[:110]}")
                    break
                cpu = time.process_time() - cpu
                left, exact = list(truth), 0
                for seq, proven in zip(res.sequences, res.exact):
                    if seq in left:
                        left.remove(seq)
                        exact += bool(proven)
                r1, _ = rouge([tok.decode(t) for t in truth], [tok.decode(s) for s in res.sequences])
                print(f"{r:>4} {B:>3} {int(enc.attention_mask.sum()):>6} {str(res.ranks):>10} {100 * exact / B:>7.1f} "
                      f"{r1:>8.3f} {cpu:>6.1f}  {(res.notes[0] if res.notes else '')[:110]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="tied,frozen,lora_tag,lora")
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--victims", type=int, default=5)
    ap.add_argument("--tied-sizes", default="1,4,8")
    ap.add_argument("--thresholds", default="0,0.0001,0.001,0.003,0.01,0.05")
    ap.add_argument("--sizes", default="1,8,32")
    ap.add_argument("--ranks", default="8,64,256")
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--b-std", type=float, default=0.02)
    ap.add_argument("--tag-steps", type=int, default=300)
    ap.add_argument("--tag-len", type=int, default=6)
    ap.add_argument("--tag-indices", default="5,6,7")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sections = args.sections.split(",")
    for name in ("tied", "frozen", "lora_tag", "lora"):
        if name in sections:
            globals()[name](args)
            print()


if __name__ == "__main__":
    main()
