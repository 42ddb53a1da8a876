"""DLG throughput: the reference one-image-at-a-time loop against the batched engine.

On the same bundled CIFAR-10 images, the same LeNet weights and the same dummy init, runs

  (a) a faithful re-implementation of the reference DLG loop (Zhu et al., 2019): one image at a
      time, ``torch.optim.LBFGS(lr=1)``, ``--steps`` steps, l2 distance, joint soft labels, randn
      init;
  (b) this package's engine with the same algorithm and settings, all images at once;
  (c) this package's engine with the recommended preset (configs/cifar_fast.yaml);

and prints for each: images reconstructed with SSIM >= 0.9, mean SSIM and PSNR, label accuracy,
wall time, peak memory (each variant runs in its own child process: peak RSS on CPU,
``torch.cuda.max_memory_allocated`` on a GPU) and the speed ratios (b)/(a) and (c)/(a).

    python bench/dlg_throughput.py                      # 20 images, 300 steps (about 15 min on 2 cores)
    python bench/dlg_throughput.py --images 4 --steps 50  # a quick look
    python bench/dlg_throughput.py --device cuda          # the engine compiled (--compile auto) on the GPU
    python bench/dlg_throughput.py --compile on           # torch.compile on the CPU too (inductor, gcc)
"""

from __future__ import annotations

from leakage.attacks.settings import Dummies, LBFGS
import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from leakage.data.sources import Bundled

ROOT = Path(__file__).resolve().parents[1]


def _victims(n: int):
    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.data.datamodule import VictimDataModule

    dm = VictimDataModule(Bundled("cifar10"), num_victims=n)
    module = GradientInversion(model="lenet", model_seed=1234, labels="joint", dummies=Dummies(init="randn", init_seed=0, restarts=1))
    obs = dm.prepare(module.target)
    return dm, module, obs


def _result(name: str, recon, labels, secret, seconds: float, device: str, problem_evals: int = 0,
            batched_evals: int = 0) -> dict:
    from leakage.engine.metrics import label_accuracy, reconstruction_metrics

    m = reconstruction_metrics(recon.cpu(), secret.images)
    ssim = torch.nan_to_num(m["ssim"], nan=0.0)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "variant": name,
        "success": int((ssim >= 0.9).sum()),
        "reconstructed": (ssim >= 0.9).nonzero().flatten().tolist(),  # which images (positions 0..n-1)
        "images": int(ssim.numel()),
        "ssim": float(ssim.mean()),
        "psnr": float(torch.nan_to_num(m["psnr"], nan=0.0).mean()),
        "label_acc": float(label_accuracy(labels.cpu(), secret.labels).mean()),
        "seconds": seconds,
        "peak_mib": peak,
        "problem_evals": problem_evals,  # objective evaluations summed over the problems (images)
        "batched_evals": batched_evals,  # objective calls (the reference: one per problem-evaluation)
    }


def reference(n: int, steps: int, device: str) -> dict:
    """(a) The reference DLG loop, one image at a time, with torch.optim.LBFGS."""
    dm, module, obs = _victims(n)
    net = module.target.to(device)
    params = list(net.parameters())
    for p in params:
        p.requires_grad_(True)
    # the same dummy init the engine draws for these problems (randn, init_seed 0, restarts 1: each
    # problem from its own generator)
    all_x, all_y = module.initial_dummies(obs)
    recons, labels = [], []
    evals = 0
    t0 = time.perf_counter()
    for v in range(n):
        target_grads = [obs.gradients[name][v].to(device) for name in module.param_names]
        dummy_data = all_x[v].clone().to(device).requires_grad_(True)
        dummy_label = all_y[v].clone().to(device).requires_grad_(True)
        optimizer = torch.optim.LBFGS([dummy_data, dummy_label], lr=1)
        for _ in range(steps):
            def closure():
                optimizer.zero_grad()
                pred = net(dummy_data)
                loss = torch.mean(torch.sum(-F.softmax(dummy_label, -1) * F.log_softmax(pred, -1), -1))
                dy_dx = torch.autograd.grad(loss, params, create_graph=True)
                grad_diff = sum(((gx - gy) ** 2).sum() for gx, gy in zip(dy_dx, target_grads))
                grad_diff.backward()
                return grad_diff

            optimizer.step(closure)
        evals += optimizer.state[dummy_data]["func_evals"]
        recons.append(dummy_data.detach())
        labels.append(dummy_label.detach().argmax(-1))
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return _result("(a) reference DLG loop", torch.stack(recons), torch.stack(labels), dm.secret, seconds, device,
                   evals, evals)


def engine(n: int, steps: int, device: str, preset: str | None, compile: str = "auto") -> dict:
    """(b) / (c): the batched engine through Lightning, all images at once."""
    import lightning.pytorch as pl

    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.data.datamodule import VictimDataModule

    from leakage.attacks.settings import Objective
    from leakage.fit import attack_arguments

    kwargs = dict(model="lenet", model_seed=1234, objective=Objective(distance="l2", compile=compile),
                  optimizer=LBFGS(lr=1.0), labels="joint", dummies=Dummies(init="randn", init_seed=0, restarts=1))
    max_steps = steps
    if preset is not None:
        cfg = yaml.safe_load((ROOT / "configs" / preset).read_text())
        kwargs = attack_arguments(cfg["model"], GradientInversion)  # the preset's objects, as leakage fit builds them
        kwargs["objective"] = kwargs["objective"].replace(compile=compile)
        max_steps = cfg["trainer"]["max_steps"]
    dm = VictimDataModule(Bundled("cifar10"), num_victims=n)
    module = GradientInversion(**kwargs)
    trainer = pl.Trainer(max_steps=max_steps, accelerator=device if device == "cuda" else "cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    calls = [0]
    objective = module.matching_loss

    def counted(*a, **k):
        calls[0] += torch.is_grad_enabled()  # the attack's evaluations, not the final one
        return objective(*a, **k)

    module.matching_loss = counted
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    module.matching_loss = objective
    with torch.no_grad():
        losses = module.final_evaluation()["loss"]
    best, _ = module.best_restarts(losses)
    recon = module.reconstruction()[best]  # each problem's best iterate
    labels = module.recovered_labels()[best]
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    name = f"(c) engine, preset {preset}" if preset else "(b) engine, same settings"
    evals = int(trainer.optimizers[0].state["problems"]["func_evals"].sum()) if kwargs["optimizer"] == "lbfgs" else 0
    return _result(name, recon, labels, dm.secret, seconds, device, evals, calls[0])


def _child(fn, args, queue) -> None:
    torch.set_num_threads(torch.get_num_threads())
    queue.put(fn(*args))


def run_isolated(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--preset", default="cifar_fast.yaml", help="config for variant (c)")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                    help="the engine's --model.objective.compile (auto: on a GPU only)")
    ap.add_argument("--skip-reference", action="store_true", help="run (b) and (c) only (no ratios)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    results = []
    if not args.skip_reference:
        results.append(run_isolated(reference, args.images, args.steps, args.device))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    results.append(run_isolated(engine, args.images, args.steps, args.device, None, args.compile))
    results.append(run_isolated(engine, args.images, args.steps, args.device, args.preset, args.compile))

    print(f"\nDLG throughput on {args.images} bundled CIFAR-10 images, LeNet, device {args.device}, "
          f"{torch.get_num_threads()} threads, engine compile {args.compile}, reference budget {args.steps} L-BFGS steps\n")
    head = "| variant | SSIM>=0.9 | mean SSIM | mean PSNR | label acc | wall time (s) | peak memory (MiB) | speed-up vs (a) |"
    print(head)
    print("|---" * 8 + "|")
    ref = results[0]["seconds"] if not args.skip_reference else None
    for r in results:
        ratio = f"{ref / r['seconds']:.1f}x" if ref else "n/a"
        print(f"| {r['variant']} | {r['success']}/{r['images']} | {r['ssim']:.3f} | {r['psnr']:.2f} | "
              f"{100 * r['label_acc']:.0f}% | {r['seconds']:.1f} | {r['peak_mib']:.0f} | {ratio} |")
    if not args.skip_reference:
        # the same images? (which ones succeed depends on rounding where an attack barely converges)
        ref_set = set(results[0]["reconstructed"])
        for r in results:
            mine = set(r["reconstructed"])
            print(f"{r['variant']}: {r['problem_evals']} problem-evaluations in {r['batched_evals']} objective calls; "
                  f"reconstructed images {sorted(mine)}; vs (a): "
                  f"{len(mine & ref_set)} in common, only here {sorted(mine - ref_set)}, only in (a) {sorted(ref_set - mine)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
