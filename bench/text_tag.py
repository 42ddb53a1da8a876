"""TAG on text at B = 1 (configs/text_tag.yaml) over several bundled sentences, and the token set's
precision and recall (configs/text_tokens.yaml), one thread.

    python bench/text_tag.py                          # sentences 0-9 cut to 8 tokens, tiny GPT-2
    python bench/text_tag.py --sentences 20 --seq-len 12 --model bert_tiny
    python bench/text_tag.py --attack lamp --sentences 4 --batch-size 2 --no-token-set   # LAMP, 4 updates of 2

Prints per sentence the truth, the reconstruction and its ROUGE-1 / ROUGE-2 / token accuracy, then
the means and the attack's wall time per sentence (all sentences are attacked in one run, one
problem each; time per sentence is the run's attack time over the sentences). Then the token set at
B = 1, 4 and 8 (one closed-form run each): precision and recall of the distinct tokens read against
the batch's distinct tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from leakage.cli import main  # noqa: E402


def _fit(config: str, out: Path, *extra: str) -> tuple[Path, float]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own report: read back from its files below
        main(["fit", "--config", str(REPO / "configs" / config), *extra, "--trainer.logger.init_args.save_dir", str(out),
              "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false",
              "--report.image_every_n_steps", "0"])
    (run,) = sorted(out.glob("*/version_*"))
    return run, time.perf_counter() - start


def main_bench() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=8)
    ap.add_argument("--model", default="gpt2_tiny")
    ap.add_argument("--steps", type=int, default=None, help="trainer.max_steps (default the preset's)")
    ap.add_argument("--attack", choices=("tag", "lamp"), default="tag", help="configs/text_<attack>.yaml")
    ap.add_argument("--batch-size", type=int, default=1, help="sentences per update (--sentences updates)")
    ap.add_argument("--prior-weight", type=float, default=None, help="lamp: objective.prior_weight (default the preset's)")
    ap.add_argument("--no-token-set", action="store_true", help="skip the token set's precision and recall")
    args = ap.parse_args()
    torch.set_num_threads(1)
    extra = ["--model.model", args.model, "--data.source.seq_len", str(args.seq_len),
             "--data.num_victims", str(args.sentences), "--data.batch_size", str(args.batch_size)]
    if args.steps:
        extra += ["--trainer.max_steps", str(args.steps)]
    if args.prior_weight is not None:
        extra += ["--model.objective.prior_weight", str(args.prior_weight)]
    if args.batch_size > 1:  # iDLG reads one label: at B > 1 the labels are given (public), the text is attacked
        extra += ["--model.labels", "known", "--data.public_labels", "true"]
    with tempfile.TemporaryDirectory() as tmp:
        run, seconds = _fit(f"text_{args.attack}.yaml", Path(tmp) / args.attack, *extra)
        rows = list(csv.DictReader((run / "metrics.csv").open()))
        summary = json.loads((run / "metrics.json").read_text())["summary"]
        text = (run / "metrics.txt").read_text()
        print(f"{args.attack.upper()}, {args.model}, seq_len {args.seq_len}, B = {args.batch_size}, {args.sentences} "
              f"updates (configs/text_{args.attack}.yaml{', labels known' if args.batch_size > 1 else ''})")
        for r in rows:
            print(f"  sentence {r['indices']:>3}: ROUGE-1 {float(r['rouge1']):.3f}  ROUGE-2 {float(r['rouge2']):.3f}  "
                  f"token accuracy {float(r['token_accuracy']):.3f}  exact {float(r['exact_sequences']):.2f}")
        print(f"mean ROUGE-1 {summary['rouge1_mean']:.3f}  ROUGE-2 {summary['rouge2_mean']:.3f}  token accuracy "
              f"{summary['token_accuracy_mean']:.3f}  exact {summary['exact_sequences_mean']:.3f}; "
              f"{seconds / args.sentences:.1f} s per update (run total {seconds:.1f} s, one thread)")
        print("\n".join(line for line in text.splitlines() if line.startswith(("  true", "  rec"))))
        for B in () if args.no_token_set else (1, 4, 8):
            run, seconds = _fit("text_tokens.yaml", Path(tmp) / f"tokens{B}", "--model.model", args.model,
                                "--data.batch_size", str(B), "--data.num_victims", "4")
            s = json.loads((run / "metrics.json").read_text())["summary"]
            print(f"token set, {args.model}, seq_len 16, B = {B}, 4 updates: precision {s['token_precision_mean']:.3f}  "
                  f"recall {s['token_recall_mean']:.3f}  ({seconds:.1f} s)")


if __name__ == "__main__":
    main_bench()
