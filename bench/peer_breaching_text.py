"""Text side by side with breaching (JonasGeiping/breaching 0.1.2): its TAG and ours on the same inputs.

    python bench/peer_breaching_text.py                     # 4 bundled sentences of 8 tokens, B = 1, gpt2_tiny
    python bench/peer_breaching_text.py --sentences 2 --breaching-steps 200   # a quick check

breaching runs in its own virtual environment, installed as ``bench/peer_breaching.py`` installs it
(``--venv``, default ``~/.cache/leakage-peer/venv``; a failed install ends in one line). Both tools get
the same inputs, and the script checks that they are the same:

- the same sentences: the first ``--sentences`` bundled sentences that fill ``--seq-len`` GPT-2 tokens
  (no padding, so the classifier reads the last position on both sides), one per update, labelled by
  the text kind's public rule;
- the same weights: ``configs/text_tag.yaml``'s model (``gpt2_tiny``, seed 1234: a
  ``GPT2ForSequenceClassification`` at random initialisation), its ``transformers`` config and state
  handed to breaching, which builds the classifier its own way (``AutoModelForSequenceClassification``
  in its ``HuggingFaceContainer``; the config from the job instead of from the hub); both models'
  logits are compared;
- the same update bytes: computed once as ``leakage fit`` computes it (the config's data module and
  client); both attacks read that one file and record its SHA-256; breaching's own client
  (``UserSingleStep``) recomputes it to show the two clients agree.

breaching runs its ``tag`` attack config as shipped (TAG's objective, joint optimisation of the
embeddings and labels with its BERT-Adam, 1,000 steps, tokens read back as the nearest embedding over
the whole vocabulary; ``--breaching-steps`` changes the budget); leakage runs ``configs/text_tag.yaml``
(the token set and length read from the update, a softmax over the set per position, continuous
steps until no position's most likely token changes for 10 steps (200 at most), then at most 20 of
discrete search) as ``leakage fit`` runs it. Each tool runs in its own process, one
thread. Both are scored by the same function (``TextKind.evaluate``: ROUGE-1/2 F of the decoded
text, token accuracy, exact sequences) and timed (the attack alone: process start and imports left out).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from peer_breaching import THREADS, breaching_python, fail, update_sha  # noqa: E402

WORKER = BENCH / "peer_breaching_text_worker.py"
CONFIG = "text_tag"


def read_config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "configs" / f"{CONFIG}.yaml").read_text())


def data_module(cfg: dict, seq_len: int, indices: list[int] | None = None, victims: int = 1):
    from leakage.data.datamodule import VictimDataModule

    source = {"class_path": "leakage.data.sources.BundledText", "init_args": {"seq_len": seq_len}}
    data = {**cfg["data"], "source": source, "num_victims": victims, "batch_size": 1}
    if indices is not None:
        data.update(indices=indices, num_victims=len(indices))
    return VictimDataModule.from_config(data)


def attack_module(cfg: dict, dm):
    from leakage.attacks.family import attack_class
    from leakage.fit import attack_arguments

    cls = attack_class(cfg["attack"])
    return cls(**{**attack_arguments(cfg["model"], cls), "input_shape": dm.input_shape, "num_classes": dm.num_classes})


def full_sentences(cfg: dict, seq_len: int, count: int) -> list[int]:
    """The first ``count`` bundled sentences that fill ``seq_len`` tokens (no padding)."""
    import torch

    dm = data_module(cfg, seq_len, victims=min(1000, 8 * count + 16))
    secret = dm.load_victims()
    pad = secret.images.new_tensor(50256)
    full = [int(i) for i, x in zip(torch.as_tensor(secret.indices).view(-1), secret.images.view(len(secret.images), -1))
            if not (x == pad).any()]
    if len(full) < count:
        fail(f"only {len(full)} of the first sentences fill {seq_len} tokens; ask for fewer --sentences")
    return full[:count]


def prepare(job_dir: Path, cfg: dict, seq_len: int, indices: list[int]) -> str:
    """Write the ids, weights, logits and the update (computed once, as ``leakage fit`` computes it)."""
    import torch

    dm = data_module(cfg, seq_len, indices)
    module = attack_module(cfg, dm)
    target = module.target
    observation = dm.prepare(target)
    ids, labels = dm.secret.images.long(), dm.secret.labels
    with torch.no_grad():
        logits = torch.cat([target.eval()(ids[v]) for v in range(ids.shape[0])])
    hf = target.model
    job_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"ids": ids, "labels": labels, "weights": dict(hf.state_dict()), "logits": logits,
                "update": {k: v.contiguous() for k, v in observation.gradients.items()}}, job_dir / "inputs.pt")
    (job_dir / "hf.json").write_text(json.dumps({"hf_config": hf.config.to_diff_dict() | {"model_type": hf.config.model_type},
                                                 "update_names": list(observation.gradients),
                                                 "num_classes": dm.num_classes, "model_name": cfg["model"]["model"]}))
    return update_sha(observation.gradients)


def leakage_job(job_dir: Path, seq_len: int, indices: list[int]) -> None:
    """The leakage side, in its own process: ``configs/text_tag.yaml``'s attack module and data module as
    ``leakage fit`` builds them, the observation holding the job's update bytes, one ``Trainer.fit``."""
    import lightning.pytorch as pl
    import torch

    torch.set_num_threads(1)
    cfg = read_config()
    inputs = torch.load(job_dir / "inputs.pt", weights_only=True)
    pl.seed_everything(cfg["seed_everything"], verbose=False)
    dm = data_module(cfg, seq_len, indices)
    module = attack_module(cfg, dm)
    for k, t in module.target.model.state_dict().items():
        if not torch.equal(t, inputs["weights"][k]):
            raise ValueError(f"configs/{CONFIG}.yaml's model differs from the job's weights at {k}")
    clean = dm.prepare(module.target)
    if not all(torch.equal(clean.gradients[k], inputs["update"][k]) for k in clean.gradients):
        raise ValueError(f"configs/{CONFIG}.yaml's client computes another update than the job's")
    dm.observation = dataclasses.replace(clean, gradients=inputs["update"])
    trainer = pl.Trainer(max_steps=cfg["trainer"]["max_steps"], logger=False, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
                         limit_val_batches=0, accelerator="cpu", devices=1)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit(module, datamodule=dm)
    result = module.results(module.final_evaluation())
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    recon = dm.observation.kind.decode(result["recon"].detach().cpu())
    torch.save({"recon": recon.view(inputs["ids"].shape)}, job_dir / "leakage.pt")
    (job_dir / "leakage.json").write_text(json.dumps(
        {"seconds": seconds, "cpu_seconds": cpu_seconds, "steps": trainer.global_step, "max_steps": cfg["trainer"]["max_steps"],
         "update_sha256": update_sha(dm.observation.gradients), "threads": torch.get_num_threads()}))


def run(args: list[str], job_dir: Path, name: str, env: dict) -> None:
    with open(job_dir / f"{name}.log", "w") as log:
        done = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **THREADS, **env})
    if done.returncode != 0:
        tail = (job_dir / f"{name}.log").read_text().strip().splitlines()[-1:] or ["no output"]
        fail(f"{name}'s run failed ({tail[0][:300]}); its log: {job_dir / f'{name}.log'}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=4, help="bundled sentences, one update each (default 4)")
    p.add_argument("--seq-len", type=int, default=8, help="tokens per sentence (default 8, as the preset)")
    p.add_argument("--breaching-steps", type=int, default=1000, help="breaching's TAG steps (default 1,000: its config's)")
    p.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "leakage-peer" / "venv")
    p.add_argument("--work", type=Path, default=None, help="folder of the runs' inputs and logs")
    p.add_argument("--leakage-job", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--indices", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.leakage_job is not None:
        leakage_job(a.leakage_job, a.seq_len, [int(i) for i in a.indices.split(",")])
        return
    if not 1 <= a.sentences <= 50:
        fail(f"--sentences must be 1-50, got {a.sentences}")
    if not 2 <= a.seq_len <= 64:
        fail(f"--seq-len must be 2-64, got {a.seq_len}")
    if a.breaching_steps < 1:
        fail(f"--breaching-steps must be >= 1, got {a.breaching_steps}")
    python = breaching_python(a.venv.expanduser())
    os.environ.update(THREADS)
    import torch

    torch.set_num_threads(1)
    cfg = read_config()
    indices = full_sentences(cfg, a.seq_len, a.sentences)
    work = a.work or Path.home() / ".cache" / "leakage-peer" / "runs" / ("text-" + time.strftime("%Y%m%d-%H%M%S"))
    job_dir = work / hashlib.sha1(repr((a.seq_len, indices)).encode()).hexdigest()[:10]
    sha = prepare(job_dir, cfg, a.seq_len, indices)
    job = json.loads((job_dir / "hf.json").read_text()) | {"steps": a.breaching_steps, "seed": 0}
    (job_dir / "job.json").write_text(json.dumps(job))
    print(f"sentences {indices}, {a.seq_len} tokens, B = 1; breaching tag ({a.breaching_steps} steps) ...", flush=True)
    run([str(python), str(WORKER), str(job_dir)], job_dir, "breaching", {"PYTHONPATH": ""})
    print(f"leakage configs/{CONFIG}.yaml ...", flush=True)
    run([sys.executable, str(Path(__file__).resolve()), "--leakage-job", str(job_dir), "--seq-len", str(a.seq_len),
         "--indices", ",".join(map(str, indices))], job_dir, "leakage", {"PYTHONPATH": str(ROOT)})
    b = json.loads((job_dir / "breaching.json").read_text()) | torch.load(job_dir / "breaching.pt", weights_only=True)
    lk = json.loads((job_dir / "leakage.json").read_text()) | torch.load(job_dir / "leakage.pt", weights_only=True)
    if not b["update_sha256"] == lk["update_sha256"] == sha:
        fail(f"the two tools attacked different update bytes ({b['update_sha256'][:12]} / {lk['update_sha256'][:12]}, "
             f"prepared {sha[:12]})")
    inputs = torch.load(job_dir / "inputs.pt", weights_only=True)
    kind = data_module(cfg, a.seq_len, indices).prepare(attack_module(cfg, data_module(cfg, a.seq_len, indices)).target).kind
    truth = inputs["ids"].float()
    n = len(indices)
    print(f"\nmachine: {os.cpu_count()} CPU cores, one torch thread per process (breaching {b['threads']}, leakage "
          f"{lk['threads']}); torch {torch.__version__}; breaching 0.1.2; inputs and logs under {job_dir}")
    print(f"checks: update SHA-256 {sha[:16]}... attacked by both; breaching's container gives "
          f"{'the same logits (bitwise)' if b['logits_equal'] else 'logits within %.1e' % b['logits_max_diff']}; "
          f"breaching's own client gives the update to within {b['client_max_diff']:.1e} of its largest entry\n")
    rows = []
    for tool, r, run_name in (("breaching", b, f"`tag` ({b['steps']} steps, joint labels, {b['token_recovery']})"),
                              ("leakage", lk, f"`configs/{CONFIG}.yaml` ({lk['steps']} of {lk['max_steps']} steps run)")):
        m = kind.evaluate(r["recon"].float(), truth)
        rows.append((tool, run_name, m, r))
        for v in range(n):
            print(f"  {tool:>9} {indices[v]:>4}: {kind.texts(r['recon'][v])[0]!r}  (truth {kind.texts(inputs['ids'][v])[0]!r})")
    print("\n| tool | run | sentences | ROUGE-1 | ROUGE-2 | token accuracy | exact | wall s per sentence | CPU s per sentence |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tool, run_name, m, r in rows:
        print(f"| {tool} | {run_name} | {n} | {float(m['rouge1'].mean()):.3f} | {float(m['rouge2'].mean()):.3f} | "
              f"{float(m['token_accuracy'].mean()):.3f} | {int(m['exact_sequences'].sum())}/{n} | "
              f"{r['seconds'] / n:.1f} | {r['cpu_seconds'] / n:.1f} |")


if __name__ == "__main__":
    main()
