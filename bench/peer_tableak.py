"""Side by side with TabLeak's own code (eth-sri/tableak) on the same Adult records, in one command.

    python bench/peer_tableak.py                                   # B = 8 and 32, 3 batches each, TabLeak's 1,500 steps x 30
    python bench/peer_tableak.py --batch-sizes 8 --batches 1 --steps 100 --restarts 2   # a quick check (about a minute)
    python bench/peer_tableak.py --tableak /path/to/tableak        # a checkout, or a git mirror / URL to clone

TabLeak's code (``--tableak``: a checkout; or a git URL or bare mirror, cloned into
``~/.cache/leakage-peer/tableak``; default https://github.com/eth-sri/tableak) runs unchanged in its
own process (``bench/peer_tableak_worker.py``), one thread, with one call patched at run time for
today's torch (see the worker). Its dependencies come from this environment; pandas, which this
environment lacks, is installed from the package registry into a separate virtual environment
(``--venv``, default ``~/.cache/leakage-peer/tableak-venv``, with this environment's packages on its
path through a ``.pth`` file). Nothing of TabLeak is copied into ``leakage`` or made a dependency.

The same inputs: batch ``k`` of size ``B`` is records ``kB .. (k+1)B - 1`` of the complete records
(no missing value) of the official Adult test split, in file order, for both tools: ``leakage``'s
bundled ``adult_test_0_999.csv`` (the first 1,000 records, 927 complete) and TabLeak's
``datasets/ADULT/adult.test`` (it drops the records with a ``?`` and keeps the order; it does not
shuffle unless asked). The script checks that TabLeak's decoded true rows are ours, value by value.
Labels known on both sides; each tool uses its own untrained ``d -> 100 -> 100 -> 2`` ReLU net
(seeded) in its own encoding (TabLeak's: one-hot columns standardised too, statistics from its
train and test splits; ours: the schema of the bundled records), so the updates differ, the
records do not.

TabLeak's side is its TabLeak setting (config 46 of its ``run_inversion_attacks.py``: cosine loss,
signed Adam lr 0.06, uniform init, 1,500 steps, 30 restarts one after another pooled by
``median+softmax``; ``--steps`` and ``--restarts`` change its budget). Ours is
``configs/adult_tableak.yaml`` (its ``model:`` settings and ``trainer.max_steps``; ``--ours-steps``,
``--ours-refine-steps`` override them), one fit per batch as ``bench/tabular_batch.py`` runs it.

Both are scored by the same scorer, ``leakage``'s ``TabularKind.evaluate`` (TabLeak's accuracy:
rows Hungarian-matched, a category right when exact, a continuous value within 0.319 standard
deviations), on the values each tool reconstructs (continuous values clamped to the bounds, not
rounded), with the standard deviations of our schema for both (the population standard deviation
of the 927 records). Printed beside it: both scored with TabLeak's standard deviations instead
(the sample standard deviation over its train and test splits), and TabLeak's own metric on its
own output (its code: continuous values rounded to whole numbers, its standard deviations), which
should agree with the second to within that rounding.

Times: the attack alone (TabLeak's ``invert_grad``; our ``Trainer.fit`` and pooling), wall and CPU
(``time.process_time`` of the process); on a shared machine the CPU time is the comparable one.
TabLeak's results are cached in ``~/.cache/leakage-peer/tableak-runs`` by their job (batches,
steps, restarts, seed, commit); ``--rerun`` runs them again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("peer_tableak_worker.py")
CACHE = Path.home() / ".cache" / "leakage-peer"
URL = "https://github.com/eth-sri/tableak"
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
#: what TabLeak's code imports besides torch (its tableak.yml): module names
NEEDS = ("numpy", "scipy", "sklearn", "pandas", "matplotlib")
#: the files of the checkout the worker reads
PARTS = ("attacks/", "datasets/__init__.py", "datasets/adult.py", "datasets/base_dataset.py", "datasets/german.py",
         "datasets/lawschool.py", "datasets/health_heritage.py", "datasets/ADULT/", "models/", "utils/",
         "defenses/", "LICENSE.txt")


def fail(message: str) -> None:
    print(f"peer_tableak: error: {message}", file=sys.stderr)
    sys.exit(1)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip() and not ln.startswith("WARNING")]
    return lines[-1][:300] if lines else f"exit status {done.returncode}"


# --------------------------------------------------------------------------- TabLeak's code and environment
def checkout(source: str) -> Path:
    """A work tree of TabLeak's code: ``source`` itself when it is one, else cloned from it (URL or git
    mirror) into ``~/.cache/leakage-peer/tableak`` (only the files the worker reads are checked out)."""
    path = Path(source).expanduser()
    if (path / "run_inversion_attacks.py").is_file():
        return path.resolve()
    if not (path.exists() or "://" in source or source.startswith("git@")):
        fail(f"TabLeak's code is unavailable: {source} is neither a checkout, a git repository nor a URL")
    dest = CACHE / "tableak"
    if (dest / "run_inversion_attacks.py").is_file():
        return dest  # cloned before
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"cloning TabLeak's code from {source} into {dest} ...", flush=True)
    done = _run(["git", "clone", "-q", "--no-checkout", str(path) if path.exists() else source, str(dest)])
    if done.returncode != 0:
        fail(f"TabLeak's code is unavailable: cannot clone {source} ({_last_line(done)})")
    files = _run(["git", "-C", str(dest), "ls-tree", "-r", "--name-only", "HEAD"]).stdout.split()
    wanted = [f for f in files if any(f == p or (p.endswith("/") and f.startswith(p)) for p in PARTS)]
    wanted.append("run_inversion_attacks.py")
    done = _run(["git", "-C", str(dest), "checkout", "HEAD", "--", *wanted])
    if done.returncode != 0:
        fail(f"TabLeak's code is unavailable: cannot check out {dest} ({_last_line(done)})")
    return dest


def tableak_python(venv: Path) -> str:
    """A python that imports what TabLeak's code needs: this one, else a venv beside it with the missing packages."""
    probe = ["-c", f"import {', '.join(NEEDS)}, torch"]
    if _run([sys.executable, *probe]).returncode == 0:
        return sys.executable
    python = venv / "bin" / "python"
    if python.exists() and _run([str(python), *probe]).returncode == 0:
        return str(python)
    missing = [m for m in NEEDS if _run([sys.executable, "-c", f"import {m}"]).returncode != 0]
    print(f"installing {', '.join(missing)} (TabLeak's code needs it; this environment lacks it) into {venv} ...",
          flush=True)
    done = _run([sys.executable, "-m", "venv", str(venv)])
    if done.returncode != 0:
        fail(f"cannot create a virtual environment at {venv}: {_last_line(done)}")
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(purelib, "_leakage_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip_names = {"sklearn": "scikit-learn"}
    done = _run([str(python), "-m", "pip", "install", "-q", *[pip_names.get(m, m) for m in missing]])
    if done.returncode != 0:
        fail(f"cannot install {', '.join(missing)} into {venv} (pip: {_last_line(done)}); the package registry must be reachable")
    if _run([str(python), *probe]).returncode != 0:
        fail(f"{venv} still cannot import TabLeak's dependencies: {_last_line(_run([str(python), *probe]))}")
    return str(python)


def run_tableak(code: Path, python: str, batches: list[list[int]], steps: int, restarts: int, seed: int,
                rerun: bool) -> dict:
    commit = _run(["git", "-C", str(code), "rev-parse", "HEAD"]).stdout.strip() or "unknown"
    job = {"batches": batches, "seed": seed, "steps": steps, "restarts": restarts}
    key = hashlib.sha256(json.dumps({**job, "commit": commit}, sort_keys=True).encode()).hexdigest()[:16]
    runs = CACHE / "tableak-runs"
    runs.mkdir(parents=True, exist_ok=True)
    out = runs / f"B{len(batches[0])}_n{len(batches)}_s{steps}_r{restarts}_{key}.json"
    if out.is_file() and not rerun:
        print(f"TabLeak's code: results of an earlier run of this job reused ({out}; --rerun runs it again)", flush=True)
        return {**json.loads(out.read_text()), "commit": commit, "reused": str(out)}
    job_file = runs / f"{out.stem}.job.json"
    job_file.write_text(json.dumps(job))
    n = f"{len(batches)} batch{'es' if len(batches) > 1 else ''}"
    print(f"TabLeak's code ({commit[:8]}): B = {len(batches[0])}, {n}, {steps} steps x {restarts} "
          "restarts ...", flush=True)
    log = runs / f"{out.stem}.log"
    with open(log, "w") as f:
        done = subprocess.run([python, str(WORKER), str(code), str(job_file), str(out)], stdout=f,
                              stderr=subprocess.STDOUT, env={**os.environ, **THREADS})
    if done.returncode != 0 or not out.is_file():
        tail = [ln for ln in log.read_text().splitlines() if ln.strip()]
        fail(f"TabLeak's code failed ({log}): {tail[-1][:300] if tail else done.returncode}")
    return {**json.loads(out.read_text()), "commit": commit}


# --------------------------------------------------------------------------- ours
def run_ours(batch: list[int], settings: dict, data: dict, steps: int, seed: int):
    import lightning.pytorch as pl
    import torch
    from tabular_batch import timed_attack  # bench/, the script's own folder

    from leakage.data.datamodule import VictimDataModule

    torch.set_num_threads(1)
    pl.seed_everything(seed, verbose=False)
    data = {k: v for k, v in data.items() if k != "num_victims"}
    dm = VictimDataModule.from_config({**data, "batch_size": len(batch), "indices": batch})
    module, result, wall, cpu = timed_attack(dm, settings, steps)
    own = module.kind.evaluate(result["recon"], dm.secret.images)
    return module.kind, result["recon"][0], dm.secret.images[0], wall, cpu, own


# --------------------------------------------------------------------------- the one scorer
def values(schema, encoded) -> list[list]:
    """Encoded rows as values: argmax categories, continuous values de-standardised and clamped to the
    schema's bounds, not rounded (the schema's ``decode`` rounds whole-number features)."""
    rows = []
    mean, std = schema.column_stats()  # standardised one-hot columns back to their (soft) one-hot
    for row in encoded.detach().double() * std.double() + mean.double():
        vals = []
        for f, sl in schema.blocks():
            if f.type == "categorical":
                vals.append(f.categories[int(row[sl].argmax())])
            else:
                vals.append(min(max(float(row[sl.start]) * f.std + f.mean, f.min), f.max))
        rows.append(vals)
    return rows


def scoring_schema(schema, categories: dict, stats: dict | None = None):
    """Our schema with every category TabLeak knows added (a category absent from the 927 records is
    then a wrong answer, not an encoding error; plain one-hot: the score reads the argmax only) and, with ``stats``, TabLeak's means and standard
    deviations instead of ours (bounds and tolerance rule unchanged)."""
    from dataclasses import replace

    from leakage.data.tables import TableSchema

    feats = []
    for f in schema.features:
        if f.type == "categorical":
            extra = [c for c in categories.get(f.name, []) if c not in f.categories]
            feats.append(replace(f, categories=list(f.categories) + extra, onehot_mean=[], onehot_std=[]))
        elif stats is not None:
            feats.append(replace(f, mean=stats["mean"][f.name], std=stats["std"][f.name]))
        else:
            feats.append(replace(f))
    return TableSchema(feats, schema.label, list(schema.classes))


def score(schema, truth: list[list], recon: list[list]) -> dict:
    """TabLeak's accuracy of ``recon`` against ``truth`` (value rows), by ``leakage``'s TabularKind.evaluate."""
    from leakage.data.kinds.tabular import TabularKind

    header = [f.name for f in schema.features] + [schema.label]
    label = schema.classes[0]
    enc = [schema.encode(header, [[repr(v) if isinstance(v, float) else v for v in r] + [label] for r in rows])[0]
           for rows in (truth, recon)]
    m = TabularKind(schema).evaluate(enc[1][None], enc[0][None])
    return {k: float(m[k][0]) for k in ("accuracy", "accuracy_categorical", "accuracy_continuous")}


def same_rows(ours: list[list], theirs: list[list], schema) -> str | None:
    """None when TabLeak's true rows are ours (categories equal, continuous values equal to float32
    rounding: TabLeak holds them standardised in float32), else the first difference."""
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for f, x, y in zip(schema.features, a, b):
            if (f.type == "categorical" and x != y) or (f.type != "categorical" and abs(float(x) - float(y)) > 1e-3 + 1e-6 * abs(float(x))):
                return f"record {i}, {f.name}: ours {x!r}, TabLeak's {y!r}"
    return None if len(ours) == len(theirs) else f"{len(ours)} rows against {len(theirs)}"


# --------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tableak", default=URL, help="TabLeak checkout, git mirror or URL (default: %(default)s)")
    p.add_argument("--venv", type=Path, default=CACHE / "tableak-venv")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--batches", type=int, default=3, help="batches per batch size: records 0..B-1, B..2B-1, ...")
    p.add_argument("--steps", type=int, default=1500, help="TabLeak's code's steps per restart (its setting: 1500)")
    p.add_argument("--restarts", type=int, default=30, help="TabLeak's code's restarts (its setting: 30)")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "adult_tableak.yaml")
    p.add_argument("--ours-steps", type=int, default=None, help="our steps (default: the config's trainer.max_steps)")
    p.add_argument("--ours-refine-steps", type=int, default=None, help="our refine_steps (default: the config's)")
    p.add_argument("--ours-standardize-onehot", choices=("true", "false"), default=None,
                   help="our encoding's one-hot columns standardised, as TabLeak's (default: the config's data.source.init_args.standardize_onehot)")
    p.add_argument("--seed", type=int, default=42, help="both nets' seed (TabLeak's default random_state)")
    p.add_argument("--rerun", action="store_true", help="run TabLeak's code again instead of reusing cached results")
    p.add_argument("--json", type=Path, default=None, help="also write every measurement to this file")
    a = p.parse_args()
    if a.batches < 1 or min(a.batch_sizes) < 1:
        fail("--batches and --batch-sizes must be >= 1")
    if a.batches * max(a.batch_sizes) > 927:
        fail(f"{a.batches} batches of {max(a.batch_sizes)} need more than the 927 complete bundled records")

    import yaml

    cfg = yaml.safe_load(a.config.read_text())
    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.fit import attack_arguments

    settings = attack_arguments(cfg["model"], GradientInversion)  # its objects, as leakage fit builds them
    if a.ours_refine_steps is not None:
        settings["budget"] = settings["budget"].replace(refine_steps=a.ours_refine_steps)
    ours_steps = a.ours_steps or cfg["trainer"]["max_steps"]
    data = dict(cfg["data"])
    source = data.get("source") if isinstance(data.get("source"), dict) else {}
    source = data["source"] = {**source, "init_args": dict(source.get("init_args") or {})}
    if a.ours_standardize_onehot is not None:
        source["init_args"]["standardize_onehot"] = a.ours_standardize_onehot == "true"
    if (str(source.get("class_path")).rpartition(".")[2], source["init_args"].get("dataset", "adult"),
            data.get("public_labels")) != ("BundledTable", "adult", True):
        fail(f"{a.config} must attack the bundled Adult records with public labels (data.source BundledTable, "
             "data.public_labels true)")
    if settings["budget"].refine_steps >= ours_steps:
        fail(f"our refine_steps ({settings['budget'].refine_steps}) must be below our steps ({ours_steps}): "
             "--ours-refine-steps lowers it")
    code = checkout(a.tableak)
    python = tableak_python(a.venv.expanduser())
    load0 = os.getloadavg()
    print(f"load average at the start {load0[0]:.1f} on {os.cpu_count()} cores; one thread per process", flush=True)

    everything = []
    for B in a.batch_sizes:
        batches = [list(range(k * B, (k + 1) * B)) for k in range(a.batches)]
        theirs = run_tableak(code, python, batches, a.steps, a.restarts, a.seed, a.rerun)
        stats = {"mean": theirs["continuous_mean"], "std": theirs["continuous_std"]}
        rows = []
        for k, batch in enumerate(batches):
            kind, recon, truth, wall, cpu, own = run_ours(batch, settings, data, ours_steps, a.seed)
            schema = kind.schema
            ours_truth, ours_recon = values(schema, truth), values(schema, recon)
            tb = theirs["batches"][k]
            diff = same_rows(ours_truth, tb["truth"], schema)
            if diff is not None:
                fail(f"TabLeak's batch {k} is not our records {batch[0]}-{batch[-1]}: {diff}")
            s_ours = scoring_schema(schema, theirs["categories"])
            s_theirs = scoring_schema(schema, theirs["categories"], stats)
            row = {"B": B, "batch": k, "records": f"{batch[0]}-{batch[-1]}",
                   "ours": score(s_ours, ours_truth, ours_recon), "tableak": score(s_ours, ours_truth, tb["recon"]),
                   "ours_tableak_std": score(s_theirs, ours_truth, ours_recon),
                   "tableak_tableak_std": score(s_theirs, ours_truth, tb["recon"]),
                   "tableak_own_metric": tb["own_metric"],
                   "ours_wall": wall, "ours_cpu": cpu, "tableak_wall": tb["wall_seconds"], "tableak_cpu": tb["cpu_seconds"]}
            if abs(row["ours"]["accuracy"] - float(own["accuracy"][0])) > 1e-6:
                fail(f"the scorer gives our batch {k} {row['ours']['accuracy']:.4f}, the attack's own evaluate "
                     f"{float(own['accuracy'][0]):.4f}")
            rows.append(row)
            print(json.dumps(row), flush=True)
        everything += rows
        print_table(B, rows, a, ours_steps, settings, data, theirs)
    load1 = os.getloadavg()
    print(f"\nload average at the end {load1[0]:.1f} (5 min {load1[1]:.1f}) on {os.cpu_count()} cores", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"rows": everything, "load": [load0, load1]}, indent=1))


def _acc(s: dict) -> str:
    return (f"{100 * s['accuracy']:.1f}% ({100 * s['accuracy_categorical']:.1f} / "
            f"{100 * s['accuracy_continuous']:.1f})")


def print_table(B: int, rows: list[dict], a, ours_steps: int, settings: dict, data: dict, theirs: dict) -> None:
    n = len(rows)
    mean = {}
    for who in ("ours", "tableak", "ours_tableak_std", "tableak_tableak_std", "tableak_own_metric"):
        mean[who] = {k: sum(r[who][k] for r in rows) / n for k in rows[0][who]}
    for t in ("ours_wall", "ours_cpu", "tableak_wall", "tableak_cpu"):
        mean[t] = sum(r[t] for r in rows) / n
    refine = settings["budget"].refine_steps
    print(f"\n### B = {B}: leakage ({a.config.name}: {ours_steps} steps"
          f"{f', the last {refine} refining' if refine else ''}, {settings['dummies'].restarts} restarts pooled, one-hot "
          f"columns {'standardised' if data['source']['init_args'].get('standardize_onehot') else 'plain'}) "
          f"against TabLeak's code ({theirs['commit'][:8]}, config 46: {a.steps} steps x {a.restarts} restarts, "
          f"median+softmax), labels known, one thread\n")
    print("accuracy: overall (categorical / continuous), scored by leakage's TabularKind.evaluate with our schema's "
          "standard deviations for both; times of the attack alone\n")
    print("| batch (records) | leakage | TabLeak's code | leakage CPU (wall) | TabLeak's code CPU (wall) | CPU ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows + [dict(mean, records="mean", batch="")]:
        ratio = r["ours_cpu"] / r["tableak_cpu"] if r["tableak_cpu"] else float("nan")
        label = f"{r['batch']} ({r['records']})" if r["batch"] != "" else "**mean**"
        print(f"| {label} | {_acc(r['ours'])} | {_acc(r['tableak'])} | {r['ours_cpu']:.1f} s ({r['ours_wall']:.1f} s) "
              f"| {r['tableak_cpu']:.1f} s ({r['tableak_wall']:.1f} s) | {ratio:.3f} |")
    print(f"\nwith TabLeak's standard deviations (its train + test splits) instead: leakage "
          f"{_acc(mean['ours_tableak_std'])}, TabLeak's code {_acc(mean['tableak_tableak_std'])}; TabLeak's own "
          f"metric on its output (continuous values rounded to whole numbers): {_acc(mean['tableak_own_metric'])}")


if __name__ == "__main__":
    main()
