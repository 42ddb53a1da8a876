"""Side by side with breaching (JonasGeiping/breaching 0.1.2) on the same inputs, in one command.

    python bench/peer_breaching.py                                  # every setting, 20 images
    python bench/peer_breaching.py --settings dlg --images 2 --steps 0.05   # a quick check (about a minute)

breaching is installed from the package registry (``pip install breaching==0.1.2``) into its own
virtual environment (``--venv``, default ``~/.cache/leakage-peer/venv``; made with ``python -m venv``,
without system site-packages; a ``.pth`` file gives it this environment's torch, so nothing is
downloaded twice and this environment is never changed). It is never a dependency of ``leakage``
and never runs in CI or the tests. A failed install ends in one line.

Both tools get the same inputs, and the script checks that they are the same:

- the same images: the first ``--images`` of the 20 bundled CIFAR-10 test images, one per update;
- the same weights: the config's model (``lenet``: DLG's LeNet, seed 1234; ``resnet18``: the CIFAR
  ResNet-18), copied by position into breaching's own ``LeNetZhu`` / ``ResNet18``; both models'
  logits on the images are compared;
- the same update bytes: the client update is computed once, as ``leakage fit`` computes it (the
  config's data module and client, then the ``GaussianNoise`` defense of the noise setting), and both
  attacks read that one file; each records the SHA-256 of the bytes it attacked, and breaching's own
  client (``UserSingleStep`` / ``UserMultiStep``) recomputes the clean update to show the two clients agree.

Each tool runs in its own process, one after the other, one thread each (``OMP_NUM_THREADS=1``,
``torch.set_num_threads(1)``). The leakage side is the setting's config file (``configs/*.yaml``) as
``leakage fit`` runs it: its ``seed_everything``, its attack module (the ``model:`` section), its data
module (the ``data:`` client settings, on the bundled CIFAR-10 images) with the update bytes as its
observation, and one ``Trainer.fit`` of ``trainer.max_steps`` (the run's logging and reports left out). breaching runs its attack config (``deepleakage``: its DLG, 1,200 L-BFGS steps
by default; ``invertinggradients``) with its normalisation off (mean 0, std 1: both work in [0, 1]).
Both are scored by the same function, ``leakage.engine.metrics.reconstruction_metrics`` (torchmetrics SSIM
and PSNR on [0, 1] images, batch slots matched). For breaching's DLG two label accuracies are shown:
the label it optimised, and the one it reports (breaching 0.1.2 reports the argmax of its random
label template, not of the optimised labels).

Settings (``--settings``, comma-separated):

- ``dlg``: breaching ``deepleakage`` with its defaults (1,200 steps) / ``configs/cifar_dlg.yaml``;
- ``dlg300``: the same at 300 steps on both sides;
- ``fast``: breaching's default DLG / ``configs/cifar_fast.yaml``;  ``idlg``: / ``configs/cifar_idlg.yaml``;
- ``resnet``: Inverting Gradients on ResNet-18 (BatchNorm in train mode), breaching
  ``invertinggradients`` / ``configs/cifar_resnet18.yaml``, the config's steps and restarts on both
  sides (2 images and 50 steps by default: a ResNet-18 double backward costs about 0.25 s per
  problem and step on one core);
- ``fedavg``: a FedAvg client (5 local SGD steps, lr 0.1, on its one image) on LeNet: breaching's
  ``UserMultiStep`` and its multi-step objective with L-BFGS on the euclidean loss / the attack
  and client of ``configs/mnist_fedavg.yaml`` (100 steps), on the first 5 CIFAR-10 images (every
  evaluation runs the 5 local steps, and L-BFGS takes all 20 of its inner iterations per step);
- ``noise``: Gaussian noise (``--noise-sigma``, default 0.01, absolute) on the update, DLG at 300
  steps on both sides, on the first 5 images (a noisy update is never matched, so every step costs
  20 evaluations).

``--images`` caps every setting (``resnet`` uses at most 2, ``fedavg`` and ``noise`` at most 5).

``--steps`` scales every budget (``--steps 0.1``: a tenth). Default: ``dlg,dlg300,fast,resnet,fedavg,noise``.

After the table, a second one gives each run's CPU time per problem-iteration (``time.process_time``
of the attack process over the span of its wall time), the ratio leakage / breaching, and the
1-minute load average before and after each run: on a shared machine that ratio is the one to quote.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("peer_breaching_worker.py")
BREACHING = "breaching==0.1.2"
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

#: setting -> the breaching attack config and budget, the leakage config (and its budget: None = the config's)
SETTINGS = {
    "dlg": dict(about="DLG, LeNet: breaching defaults / cifar_dlg", config="cifar_dlg",
                breaching="deepleakage", breaching_steps=1200, steps=None),
    "dlg300": dict(about="DLG, LeNet, 300 steps each", config="cifar_dlg",
                   breaching="deepleakage", breaching_steps=300, steps=300),
    "fast": dict(about="LeNet: breaching DLG defaults / cifar_fast", config="cifar_fast",
                 breaching="deepleakage", breaching_steps=1200, steps=None),
    "idlg": dict(about="LeNet: breaching DLG defaults / cifar_idlg", config="cifar_idlg",
                 breaching="deepleakage", breaching_steps=1200, steps=None),
    "resnet": dict(about="Inverting Gradients, ResNet-18 (train-mode BatchNorm), same budget",
                   config="cifar_resnet18", breaching="invertinggradients", breaching_steps=50, steps=50, images=2,
                   same_restarts=True),
    "fedavg": dict(about="FedAvg, 5 local steps, LeNet: L-BFGS through the local steps", config="mnist_fedavg",
                   breaching="deepleakage", breaching_steps=None, steps=None,
                   breaching_overrides=["attack.attack_type=optimization", "attack.label_strategy=iDLG"], images=5),
    "noise": dict(about="DLG, LeNet, Gaussian noise on the update, 300 steps each", config="cifar_dlg",
                  breaching="deepleakage", breaching_steps=300, steps=300, noise=True, images=5),
}
DEFAULT = "dlg,dlg300,fast,resnet,fedavg,noise"


def fail(message: str) -> None:
    print(f"peer_breaching: error: {message}", file=sys.stderr)
    sys.exit(1)


# --------------------------------------------------------------------------- breaching's environment
def breaching_python(venv: Path) -> Path:
    """The python of a virtual environment holding breaching 0.1.2; made (and installed) when missing."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m, breaching; print(m.version('breaching'))"]
    if python.exists():
        ok = subprocess.run(probe, capture_output=True, text=True, env={**os.environ, **THREADS})
        if ok.returncode == 0 and ok.stdout.strip().endswith("0.1.2"):
            return python
    print(f"installing {BREACHING} into {venv} (its own virtual environment) ...", flush=True)
    done = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"cannot create a virtual environment at {venv}: {_last_line(done)}")
    # this environment's torch, torchvision and scipy, read-only, instead of a second torch download
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True).stdout.strip()
    Path(purelib, "_leakage_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", BREACHING], capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"cannot install {BREACHING} into {venv} (pip: {_last_line(done)}); "
             "the package registry must be reachable")
    ok = subprocess.run(probe, capture_output=True, text=True, env={**os.environ, **THREADS})
    if ok.returncode != 0:
        fail(f"{BREACHING} was installed into {venv} but does not import: {_last_line(ok)}")
    return python


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines()
             if ln.strip() and not ln.startswith("WARNING")]
    return lines[-1][:300] if lines else f"exit status {done.returncode}"


# --------------------------------------------------------------------------- the shared inputs
def digest(update: dict, v: int) -> str:
    h = hashlib.sha256()
    for t in update.values():
        h.update(t[v].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def update_sha(update: dict) -> str:
    V = next(iter(update.values())).shape[0]
    return hashlib.sha256("".join(digest(update, v) for v in range(V)).encode()).hexdigest()


def read_config(name: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


def data_module(cfg: dict, n_images: int):
    """The config's data module as ``leakage fit`` builds it, on the first ``n_images`` bundled CIFAR-10
    images, one per update (the config's client settings kept: mode, FedAvg protocol)."""
    from leakage.data.datamodule import VictimDataModule

    data = {**cfg.get("data", {}), "source": {"class_path": "leakage.data.sources.Bundled",
                                              "init_args": {"dataset": "cifar10"}}, "num_victims": n_images, "batch_size": 1}
    data.pop("indices", None)
    return VictimDataModule.from_config(data)


def attack_module(cfg: dict):
    """The config's attack as ``leakage fit`` builds it (its ``model:`` section)."""
    from leakage.attacks.gradient_inversion import GradientInversion

    from leakage.fit import attack_arguments

    return GradientInversion(**{**attack_arguments(cfg["model"], GradientInversion), "input_shape": (3, 32, 32),
                                "num_classes": 10})


def prepare(job_dir: Path, setting: dict, cfg: dict, n_images: int, sigma: float) -> str:
    """Write the job's inputs: images, weights, logits and the update, computed once the way
    ``leakage fit`` computes it (its data module's client, then the defense); return its SHA-256."""
    import torch

    from leakage.federated.defenses import GaussianNoise

    dm, module = data_module(cfg, n_images), attack_module(cfg)
    model = module.target
    clean = dm.prepare(model)
    observation = GaussianNoise(sigma, seed=0).transform(clean, dm.secret)[0] if setting.get("noise") else clean
    x, y = dm.secret.images, dm.secret.labels  # [V, 1, C, H, W], [V, 1]
    with torch.no_grad():
        logits = torch.cat([model.eval()(x[v]) for v in range(x.shape[0])])
    job_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"images": x, "labels": y, "weights": dict(model.state_dict()), "logits_eval": logits,
                "update": {k: v.contiguous() for k, v in observation.gradients.items()},
                "clean": clean.gradients}, job_dir / "inputs.pt")
    return update_sha(observation.gradients)


def client_settings(cfg: dict) -> tuple[str, dict | None]:
    """The config's client mode, and its FedAvg settings (None: FedSGD) for breaching's client."""
    dm = data_module(cfg, 1)
    c = dm.client
    fedavg = None if c is None else {"local_steps": c.local_steps, "local_lr": c.local_lr,
                                     "local_batch_size": c.mini_batch(1)}
    return dm.client_mode, fedavg


# --------------------------------------------------------------------------- the two runs
def run_breaching(python: Path, job_dir: Path, job: dict) -> dict:
    (job_dir / "job.json").write_text(json.dumps(job))
    t0 = time.perf_counter()
    with open(job_dir / "breaching.log", "w") as log:
        done = subprocess.run([str(python), str(WORKER), str(job_dir)], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **THREADS, "PYTHONPATH": ""}, cwd=job_dir)
    if done.returncode != 0:
        tail = (job_dir / "breaching.log").read_text().strip().splitlines()[-1:] or ["no output"]
        fail(f"breaching's run failed ({tail[0][:300]}); its log: {job_dir / 'breaching.log'}")
    import torch

    out = json.loads((job_dir / "breaching.json").read_text())
    out.update(torch.load(job_dir / "breaching.pt", weights_only=True))
    out["process_s"] = time.perf_counter() - t0
    return out


def run_leakage(job_dir: Path, config: str, steps: int | None, scale: float) -> dict:
    args = [sys.executable, str(Path(__file__).resolve()), "--leakage-job", str(job_dir), "--config", config,
            "--steps", str(scale)] + (["--budget", str(steps)] if steps is not None else [])
    t0 = time.perf_counter()
    with open(job_dir / f"leakage-{config}.log", "w") as log:
        done = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **THREADS, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        tail = (job_dir / f"leakage-{config}.log").read_text().strip().splitlines()[-1:] or ["no output"]
        fail(f"leakage's run of {config} failed ({tail[0][:300]}); its log: {job_dir / f'leakage-{config}.log'}")
    import torch

    out = torch.load(job_dir / f"leakage-{config}.pt", weights_only=True)
    out.update(json.loads((job_dir / f"leakage-{config}.json").read_text()))
    out["process_s"] = time.perf_counter() - t0
    return out


def scaled(steps: int, scale: float) -> int:
    return max(1, round(steps * scale))


def leakage_job(job_dir: Path, config: str, budget: int | None, scale: float) -> None:
    """The leakage side, in its own process: the config's attack module and data module as ``leakage
    fit`` builds them, the data module's observation holding the job's update bytes, one ``Trainer.fit``."""
    import dataclasses

    import torch

    torch.set_num_threads(1)
    import lightning.pytorch as pl

    cfg = read_config(config)
    inputs = torch.load(job_dir / "inputs.pt", weights_only=True)
    V = inputs["images"].shape[0]
    if cfg.get("seed_everything") is not None:  # as leakage fit does, before it builds anything
        pl.seed_everything(cfg["seed_everything"], verbose=False)
    module, dm = attack_module(cfg), data_module(cfg, V)
    for k, t in module.target.state_dict().items():  # the config's model is the one the update came from
        if not torch.equal(t, inputs["weights"][k]):
            raise ValueError(f"configs/{config}.yaml's model differs from the job's weights at {k}")
    clean = dm.prepare(module.target)  # the keys, client and metadata leakage fit attaches to the update
    if not all(torch.equal(clean.gradients[k], inputs["clean"][k]) for k in clean.gradients):
        raise ValueError(f"configs/{config}.yaml's client computes another update than the job's")
    update = inputs["update"]
    dm.observation = dataclasses.replace(clean, gradients=update)
    restarts = int(module.hparams.restarts)
    steps = scaled(budget if budget is not None else cfg["trainer"]["max_steps"], scale)
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0,
                         accelerator="cpu", devices=1)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit(module, datamodule=dm)
    result = module.results(module.final_evaluation())
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    evals = steps * V * restarts  # Adam: one evaluation per problem and step
    if module.hparams.optimizer == "lbfgs":  # the batched L-BFGS counts each problem's evaluations
        try:
            evals = int(trainer.optimizers[0].state["problems"]["func_evals"].sum())
        except (KeyError, AttributeError, IndexError):
            evals = 0  # not counted: the table says nan
    torch.save({"recon": result["recon"].detach().cpu(), "labels": result["labels"].detach().cpu()},
               job_dir / f"leakage-{config}.pt")
    (job_dir / f"leakage-{config}.json").write_text(json.dumps(
        {"seconds": seconds, "cpu_seconds": cpu_seconds, "evals": evals, "steps": steps, "restarts": restarts,
         "update_sha256": update_sha(dm.observation.gradients), "threads": torch.get_num_threads()}))


# --------------------------------------------------------------------------- the table
def score(recon, images) -> dict:
    import torch

    from leakage.engine.metrics import reconstruction_metrics

    m = reconstruction_metrics(recon.float(), images)
    ssim = torch.nan_to_num(m["ssim"], nan=0.0)
    return {"success": int((ssim >= 0.9).sum()), "ssim": float(ssim.mean()),
            "psnr": float(torch.nan_to_num(m["psnr"], nan=0.0).mean())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=DEFAULT, help=f"comma-separated, of {', '.join(SETTINGS)} (default {DEFAULT})")
    p.add_argument("--images", type=int, default=20, help="bundled CIFAR-10 images, 1-20 (default 20)")
    p.add_argument("--steps", type=float, default=1.0, help="scale of every step budget (default 1)")
    p.add_argument("--noise-sigma", type=float, default=0.01, help="Gaussian noise std of the noise setting")
    p.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "leakage-peer" / "venv")
    p.add_argument("--work", type=Path, default=None, help="folder of the runs' inputs and logs")
    p.add_argument("--leakage-job", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.leakage_job is not None:
        leakage_job(a.leakage_job, a.config, a.budget, a.steps)
        return
    names = [s.strip() for s in a.settings.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown or not names:
        fail(f"unknown setting(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SETTINGS)}")
    if not 1 <= a.images <= 20:
        fail(f"--images must be 1-20 (the bundled CIFAR-10 images), got {a.images}")
    if not a.steps > 0:
        fail(f"--steps must be a positive scale, got {a.steps}")
    if not 0 <= a.noise_sigma < float("inf"):
        fail(f"--noise-sigma must be a finite number >= 0, got {a.noise_sigma}")
    python = breaching_python(a.venv.expanduser())

    os.environ.update(THREADS)
    import torch

    torch.set_num_threads(1)
    work = a.work or Path.home() / ".cache" / "leakage-peer" / "runs" / time.strftime("%Y%m%d-%H%M%S")
    breaching_runs: dict[tuple, dict] = {}
    leakage_runs: dict[tuple, dict] = {}
    rows, checks = [], []
    for name in names:
        s = SETTINGS[name]
        cfg = read_config(s["config"])
        ignored = sorted(set(cfg.get("trainer", {})) - {"max_steps", "logger"})
        if ignored:
            print(f"note: configs/{s['config']}.yaml's trainer settings {', '.join(ignored)} are not applied here")
        n = min(a.images, s.get("images", a.images))
        mode, fedavg = client_settings(cfg)
        key = (cfg["model"].get("model", "lenet"), cfg["model"].get("model_seed", 1234), mode,
               repr(fedavg), a.noise_sigma if s.get("noise") else 0.0, n)
        job_dir = work / hashlib.sha1(repr(key).encode()).hexdigest()[:10]
        if not (job_dir / "inputs.pt").exists():
            sha = prepare(job_dir, s, cfg, n, a.noise_sigma)
        else:
            sha = update_sha(torch.load(job_dir / "inputs.pt", weights_only=True)["update"])
        restarts = int((cfg["model"].get("dummies") or {}).get("restarts", 1))
        b_steps = scaled(s["breaching_steps"] or cfg["trainer"]["max_steps"], a.steps)
        b_restarts = restarts if s.get("same_restarts") else None  # None: breaching's own (1 trial)
        bkey = (job_dir, s["breaching"], b_steps, b_restarts, tuple(s.get("breaching_overrides", ())))
        if bkey not in breaching_runs:
            print(f"[{name}] breaching {s['breaching']}, {b_steps} steps, {n} images ...", flush=True)
            job = {"breaching_model": "lenet_zhu" if key[0] == "lenet" else "ResNet18",
                   "breaching_attack": s["breaching"], "steps": b_steps, "restarts": b_restarts, "seed": 0,
                   "client_mode": mode, "breaching_overrides": list(s.get("breaching_overrides", ())),
                   "fedavg": fedavg}
            load = os.getloadavg()[0]
            breaching_runs[bkey] = run_breaching(python, job_dir, job)
            breaching_runs[bkey]["load"] = (load, os.getloadavg()[0])
        b = breaching_runs[bkey]
        lkey = (job_dir, s["config"], s["steps"])
        if lkey not in leakage_runs:
            print(f"[{name}] leakage configs/{s['config']}.yaml ...", flush=True)
            load = os.getloadavg()[0]
            leakage_runs[lkey] = run_leakage(job_dir, s["config"], s["steps"], a.steps)
            leakage_runs[lkey]["load"] = (load, os.getloadavg()[0])
        lk = leakage_runs[lkey]
        inputs = torch.load(job_dir / "inputs.pt", weights_only=True)
        images, labels = inputs["images"], inputs["labels"]
        if not (b["update_sha256"] == lk["update_sha256"] == sha):
            fail(f"[{name}] the two tools attacked different update bytes ({b['update_sha256'][:12]} / "
                 f"{lk['update_sha256'][:12]}, prepared {sha[:12]})")
        checks.append(f"- `{name}`: update SHA-256 {sha[:16]}... attacked by both; breaching's model gives "
                      f"{'the same logits (bitwise)' if b['logits_equal'] else 'logits within %.1e' % b['logits_max_diff']}; "
                      f"breaching's own client gives {'the same update bytes' if b['client_equal'] else 'the update to within %.1e of its largest entry' % b['client_max_diff']}")
        for tool, r, steps in (("breaching", b, b_steps), ("leakage", lk, lk["steps"])):
            restarts = r["restarts"]
            sc = score(r["recon"], images)
            if tool == "breaching":
                run = f"`{s['breaching']}`" + (", its defaults" if s["breaching_steps"] == steps == 1200 else "")
                acc = f"{int((r['labels_reported'].view(-1) == labels.view(-1)).sum())}/{n} reported"
                if r["labels_optimised"].numel():
                    acc = f"{int((r['labels_optimised'].view(-1) == labels.view(-1)).sum())}/{n} optimised, " + acc
                if r["labels_given"].numel():
                    acc = f"{int((r['labels_given'].view(-1) == labels.view(-1)).sum())}/{n} given by its client, " + acc
            else:
                run = f"`configs/{s['config']}.yaml`"
                acc = f"{int((r['labels'].view(-1) == labels.view(-1)).sum())}/{n}"
            per = r["seconds"] / r["evals"] * 1e3 if r["evals"] else float("nan")
            cpu_per = r["cpu_seconds"] / r["evals"] * 1e3 if r["evals"] else float("nan")
            rows.append(dict(setting=name, tool=tool, run=run, steps=steps, restarts=restarts, sc=sc, acc=acc,
                             seconds=r["seconds"], per=per, cpu_per=cpu_per, load=r["load"], n=n))
        lb, ll = rows[-2], rows[-1]
        ll["ratio"] = f"{ll['seconds'] / lb['seconds']:.2f} / {ll['per'] / lb['per']:.2f}"
    threads = {b["threads"] for b in breaching_runs.values()} | {r["threads"] for r in leakage_runs.values()}
    print(f"\nmachine: {os.cpu_count()} CPU cores, torch threads per process: {', '.join(map(str, sorted(threads)))}; "
          f"torch {torch.__version__}; breaching 0.1.2; inputs and logs under {work}")
    print("checks:\n" + "\n".join(checks) + "\n")
    print("| setting | tool | run | steps x restarts | reconstructed (SSIM >= 0.9) | mean SSIM | mean PSNR | "
          "label accuracy | wall time | per problem-iteration | leakage / breaching: wall, per iteration |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sc = r["sc"]
        print(f"| {r['setting']} | {r['tool']} | {r['run']} | {r['steps']} x {r['restarts']} | {sc['success']}/{r['n']} | "
              f"{sc['ssim']:.3f} | {sc['psnr']:.2f} dB | {r['acc']} | {r['seconds']:.1f} s | {r['per']:.2f} ms | "
              f"{r.get('ratio', '')} |")
    print("\n| setting | tool | CPU time per problem-iteration | leakage / breaching | 1-minute load average "
          "before / after the run |")
    print("|---|---|---|---|---|")
    for i, r in enumerate(rows):
        ratio = f"{r['cpu_per'] / rows[i - 1]['cpu_per']:.2f}" if r["tool"] == "leakage" else ""
        print(f"| {r['setting']} | {r['tool']} | {r['cpu_per']:.2f} ms | {ratio} | {r['load'][0]:.2f} / {r['load'][1]:.2f} |")
    print(f"({os.cpu_count()} cores; CPU time: the attack process's time.process_time over the same span as the wall time, "
          "less inflated than wall time when other processes share the cores)")
    print("\nwall time: the attack alone (breaching: its reconstruct calls; leakage: Trainer.fit and the final "
          "evaluation; process start and imports excluded); per problem-iteration: wall time / "
          "objective evaluations summed over problems (L-BFGS: every closure evaluation; Adam: one per step).")


if __name__ == "__main__":
    main()
