"""The audit's detection benchmark: a zoo of honest models against malicious servers over their settings,
with each malicious model's attack success on the same round, so the stealth-against-efficacy trade-off shows.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/audit_detection.py            # the full zoo (>= 200 honest models)
    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/audit_detection.py --quick    # a small zoo, for a try

Honest models (each audited with the pinned architecture, the previous round where there is one, and a
client batch of 16 bundled images it was not trained on): random initialisations of the built-ins
(``lenet``, ``mlp``, ``simple_cnn``, ``resnet18``) and of torchvision architectures; checkpoints after SGD
steps and after each epoch of SGD on bundled MNIST (CIFAR-10: the 20 bundled images, flipped); FedAvg rounds
(the package's FedAvg client, 4 clients, one local epoch each); DP-SGD with Opacus (Poisson sampling,
per-sample clipping, Gaussian noise), a checkpoint after each epoch.

Malicious models, several per setting (different global models, seeds and target classes): the imprint
module (:class:`~leakage.federated.server.ImprintServer`) over ``num_bins``, trap weights
(:class:`~leakage.federated.server.TrapWeightServer`) over ``trap_scale``, class fishing
(:class:`~leakage.federated.server.FishingServer`) over ``multiplier``. On the same round the attack runs on
the client's update of the same batch of 16 (``leakage.invert`` with the server's attack); each client image
is matched to a reconstruction (Hungarian, l2) and scored by SSIM; the fishing attack's one image is scored
against the fished one. An image with SSIM >= 0.5 is reconstructed.

The detection score of a model is the audit's combined one: the largest ``score / fail`` over the checks
that can fail (the audit fails at 1). The threshold at 1% false positives is set on one half of the honest
zoo (calibration) and the rates are reported on the other half; ROC-AUC is the report half against each
setting. Writes ``results.json`` (every model's scores) and ``detection.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

import leakage
from leakage.audit import audit
from leakage.audit.run import default_checks
from leakage.engine.metrics import ssim_per_image
from leakage.engine.models import build_model
from leakage.federated.fedavg import FedAvg
from leakage.federated.server import FishingServer, ImprintServer, TrapWeightServer

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
DATA = {"lenet": "mnist", "mlp": "mnist", "simple_cnn": "cifar10", "resnet18": "cifar10"}
TORCHVISION = ("mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1", "regnet_x_400mf", "efficientnet_b0")
B = 16
RECONSTRUCTS = 0.5
NEAR_EXACT = 0.9
MNIST = {}


def images(data: str, indices) -> tuple[torch.Tensor, torch.Tensor]:
    if data not in MNIST:
        MNIST[data] = leakage.bundled_images(data, range(1000 if data == "mnist" else 20))
    x, y = MNIST[data]
    return x[list(indices)], y[list(indices)]


def client_batch(data: str, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The client's batch of 16: MNIST test images 0-199 (never trained on), CIFAR-10 16 of the 20 bundled."""
    start = (B * i) % 192 if data == "mnist" else i % 5
    return images(data, range(start, start + B))


def train_pool(data: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What the server's model is trained on: MNIST 200-999; CIFAR-10 the 20 images and their mirror images."""
    if data == "mnist":
        return images("mnist", range(200, 1000))
    x, y = images("cifar10", range(20))
    return torch.cat([x, x.flip(-1)]), torch.cat([y, y])


def fresh(name: str, seed: int) -> torch.nn.Module:
    if name in TORCHVISION:
        import torchvision

        torch.manual_seed(seed)
        return getattr(torchvision.models, name)(num_classes=10).eval()
    return build_model(name, SHAPES[DATA[name]], 10, seed=seed).eval()


def snapshot(name: str, model: torch.nn.Module) -> torch.nn.Module:
    """A clean copy (no optimizer or Opacus hooks) of ``model``'s weights."""
    out = fresh(name, 0)
    out.load_state_dict(model.state_dict())
    return out.eval()


def sgd_epochs(name: str, seed: int, epochs: int, lr: float = 0.1, size: int = 256, per_epoch: bool = True):
    """``(label, model, previous)`` after each epoch of SGD (mini-batches of 32) on the training pool."""
    x, y = train_pool(DATA[name])
    x, y = x[:size], y[:size]
    model = fresh(name, seed).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    previous = snapshot(name, model)
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(x.shape[0], generator=gen).split(32):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        now = snapshot(name, model)
        yield f"{name} seed {seed} SGD epoch {epoch}", now, previous
        previous = now


def sgd_steps(name: str, seed: int, steps=(1, 3, 10), lr: float = 0.1):
    x, y = train_pool(DATA[name])
    model, done = fresh(name, seed).train(), 0
    init = snapshot(name, model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for target in steps:
        while done < target:
            idx = torch.arange(done * 32, done * 32 + 32) % x.shape[0]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            done += 1
        yield f"{name} seed {seed} {target} SGD steps", snapshot(name, model), init


def fedavg_rounds(name: str, seed: int, rounds: int, clients: int = 4):
    """FedAvg: each round, ``clients`` clients run one local epoch (the package's FedAvg client) on their own
    images; the global model moves by their mean update."""
    x, y = train_pool(DATA[name])
    per = 32 if DATA[name] == "mnist" else 8
    client = FedAvg(local_epochs=1, local_batch_size=per // 4, local_lr=0.1)
    model = fresh(name, seed)
    for r in range(1, rounds + 1):
        start = (r * clients * per) % (x.shape[0] - clients * per + 1)
        xs = x[start:start + clients * per].view(clients, per, *x.shape[1:])
        ys = y[start:start + clients * per].view(clients, per)
        update = leakage.client_update(model, xs, ys, fedavg=client)
        new = snapshot(name, model)
        with torch.no_grad():
            for n, p in new.named_parameters():
                p.add_(update[n].mean(dim=0))
        yield f"{name} seed {seed} FedAvg round {r}", new, model
        model = new


def dp_epochs(name: str, seed: int, epochs: int, noise: float):
    """DP-SGD with Opacus (rate 32/256 Poisson sampling, clip 1, ``noise`` multiplier), a checkpoint per epoch."""
    from opacus import PrivacyEngine

    x, y = train_pool(DATA[name])
    x, y = x[:256], y[:256]
    model = fresh(name, seed).train()
    previous = snapshot(name, model)
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    engine = PrivacyEngine(accountant="rdp")
    private, opt, loader = engine.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                               data_loader=loader, noise_multiplier=noise, max_grad_norm=1.0)
    for epoch in range(1, epochs + 1):
        for xb, yb in loader:
            if xb.shape[0] == 0:
                continue
            opt.zero_grad()
            F.cross_entropy(private(xb), yb).backward()
            opt.step()
        now = snapshot(name, model)
        yield f"{name} seed {seed} DP-SGD noise {noise:g} epoch {epoch} (eps {engine.get_epsilon(1e-5):.1f})", now, previous
        previous = now


def honest_zoo(quick: bool):
    """``(family, label, model, previous)`` for every honest model."""
    n = 2 if quick else 25
    for name in ("lenet", "mlp", "simple_cnn"):
        for seed in range(n):
            yield "random init", f"{name} seed {seed} init", fresh(name, seed), None
    for seed in range(1 if quick else 6):
        yield "random init", f"resnet18 seed {seed} init", fresh("resnet18", seed), None
    for arch in TORCHVISION[:1] if quick else TORCHVISION:
        for seed in range(1 if quick else 4):
            yield "torchvision init", f"{arch} seed {seed} init", fresh(arch, seed), None
    for name in ("lenet", "mlp", "simple_cnn"):
        for seed in range(1 if quick else 3):
            for label, model, previous in sgd_epochs(name, 100 + seed, 2 if quick else 4):
                yield "SGD epochs", label, model, previous
            for label, model, previous in sgd_steps(name, 200 + seed):
                yield "SGD steps", label, model, previous
    if not quick:
        for label, model, previous in sgd_epochs("resnet18", 100, 3, lr=0.05, size=40):
            yield "SGD epochs", label, model, previous
    for name in ("lenet", "mlp", "simple_cnn"):
        for seed in range(1 if quick else (2 if name != "simple_cnn" else 1)):
            for label, model, previous in fedavg_rounds(name, 300 + seed, 2 if quick else 5):
                yield "FedAvg rounds", label, model, previous
    for name in ("lenet", "mlp", "simple_cnn"):
        for seed in range(1 if quick else 2):
            for noise in (1.0,) if quick else (0.5, 1.0):
                for label, model, previous in dp_epochs(name, 400 + seed, 1 if quick else 2, noise):
                    yield "DP-SGD (Opacus)", label, model, previous


def matched_ssim(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``[B]``: each client image's SSIM with the reconstruction the Hungarian matching (l2) gives it."""
    recon = recon.clamp(0, 1)
    rows, cols = linear_sum_assignment(torch.cdist(truth.flatten(1), recon.flatten(1)).numpy())
    out = torch.zeros(truth.shape[0])
    out[torch.as_tensor(rows)] = ssim_per_image(recon[cols], truth[rows]).float()
    return out


def malicious_zoo(quick: bool):
    """``(server, setting, label, model, previous, batch, ssim per client image)``."""
    bases = [("lenet", 0), ("mlp", 0), ("lenet", 1), ("mlp", 1)][: 2 if quick else 4]
    for bins in (8, 64) if quick else (2, 8, 32, 128, 512):
        for i, (name, seed) in enumerate(bases):
            x, y = client_batch("mnist", 20 + i)
            server = ImprintServer(num_bins=bins).for_dataset("mnist")
            base = fresh(name, seed)
            sent = server.send(base, SHAPES["mnist"])
            yield "imprint", f"{bins} bins", f"imprint {bins} bins ({name} seed {seed})", sent, base, (x, y), \
                _attack(sent, server, x, y, "imprint")
    for scale in (0.7, 0.95) if quick else (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99):
        for i in range(2 if quick else 4):
            x, y = client_batch("mnist", 30 + i)
            server, base = TrapWeightServer(trap_scale=scale, seed=i), fresh("mlp", i)
            sent = server.send(base, SHAPES["mnist"])
            yield "trap weights", f"scale {scale:g}", f"trap weights {scale:g} (mlp seed {i})", sent, base, (x, y), \
                _attack(sent, server, x, y, "trap_weights")
    xs, ys = images("mnist", range(200))
    for m in (1, 1000) if quick else (0.5, 1, 2, 4, 8, 1000):
        for target in (7,) if quick else (2, 7, 9):
            chosen = [int((ys == target).nonzero()[0]), *(ys != target).nonzero().flatten()[: B - 1].tolist()]
            x, y = xs[chosen], ys[chosen]
            server, base = FishingServer(target_class=target, multiplier=m), fresh("lenet", 1234)
            sent = server.send(base, SHAPES["mnist"])
            yield "fishing", f"x{m:g}", f"fishing class {target} x{m:g} (lenet)", sent, base, (x, y), \
                _attack(sent, server, x, y, "fishing")


def honest_readout(quick: bool):
    """The trap-weight read-out of honest ``mlp`` models' first layer (what it gives back without trap weights):
    ``(label, ssim per client image)``, the baseline for the trap-weight settings."""
    for i in range(2 if quick else 4):
        x, y = client_batch("mnist", 30 + i)
        model, server = fresh("mlp", i), TrapWeightServer()
        server.layer, server.model = "net.1", model
        yield f"honest mlp seed {i}", _attack(model, server, x, y, "trap_weights")


def _attack(sent, server, x, y, attack: str) -> torch.Tensor:
    """The attack on the client's FedSGD update of ``(x, y)``: SSIM per client image (fishing: the fished one)."""
    result = leakage.invert(sent, leakage.client_update(sent, x, y), input_shape=tuple(x.shape[1:]), num_classes=10,
                            batch_size=x.shape[0], attack=attack, server=server)
    recon = result.images[0]
    if attack == "fishing":  # one image, the fished one (the first of the batch)
        return ssim_per_image(recon.clamp(0, 1), x[:1].expand_as(recon)).max().reshape(1).float()
    return matched_ssim(recon, x)


JUDGES = [c.name for c in default_checks() if math.isfinite(c.fail)]
FAIL = {c.name: c.fail for c in default_checks()}


def scored(model, previous, architecture, batch) -> dict:
    start = time.process_time()
    result = audit(model, previous=previous, architecture=architecture, batch=batch)
    scores = {f.check: (1e300 if f.score == math.inf else f.score) for f in result.findings}
    combined = max((scores[c] / FAIL[c] for c in JUDGES if scores.get(c) == scores.get(c)), default=0.0)
    return {"verdict": result.verdict, "combined": combined, "scores": scores, "cpu_s": time.process_time() - start,
            "failed": [f.check for f in result.failed]}


def tpr_at(scores, threshold) -> float:
    return sum(s >= threshold for s in scores) / max(1, len(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small zoo (a minute or two)")
    parser.add_argument("--out", default="logs/audit_detection")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    honest = []
    for i, (family, label, model, previous) in enumerate(honest_zoo(args.quick)):
        name = label.split(" ")[0]
        data = "cifar10" if name in TORCHVISION else DATA[name]
        row = scored(model, previous, fresh(name, 0), client_batch(data, i))
        honest.append({"family": family, "label": label, **row})
        if row["verdict"] == "fail":
            print(f"  honest model fails: {label}: {', '.join(row['failed'])}", flush=True)
    print(f"{len(honest)} honest models audited ({time.perf_counter() - begin:.0f} s)", flush=True)
    bad = []
    for server, setting, label, model, previous, batch, ssim in malicious_zoo(args.quick):
        row = scored(model, previous, previous, batch)
        bad.append({"server": server, "setting": setting, "label": label, "ssim": ssim.tolist(),
                    "recovered": int((ssim >= RECONSTRUCTS).sum()), "near_exact": int((ssim >= NEAR_EXACT).sum()), **row})
    print(f"{len(bad)} malicious models attacked and audited ({time.perf_counter() - begin:.0f} s)\n", flush=True)
    baseline = [{"label": label, "ssim": ssim.tolist(), "recovered": int((ssim >= RECONSTRUCTS).sum()),
                 "near_exact": int((ssim >= NEAR_EXACT).sum())} for label, ssim in honest_readout(args.quick)]
    report(honest, bad, baseline, out)
    print(f"\nwall time {time.perf_counter() - begin:.0f} s; results in {out}/results.json, plot {out}/detection.png")


def report(honest: list, bad: list, baseline: list, out: Path) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    calib, held = honest[0::2], honest[1::2]  # calibrate on one half, report on the other
    ranked = sorted((h["combined"] for h in calib), reverse=True)
    threshold = ranked[int(0.01 * len(ranked))] * (1 + 1e-9) + 1e-12  # above all but 1% of the calibration half
    fpr_held = tpr_at([h["combined"] for h in held], threshold)
    fpr_fail = tpr_at([float(h["verdict"] == "fail") for h in honest], 1)
    families = {}
    for h in honest:
        families.setdefault(h["family"], []).append(h)
    print("| honest family | models | audit fails | worst combined score (check) |")
    print("|---|---|---|---|")
    for fam, rows in families.items():
        worst = max(rows, key=lambda r: r["combined"])
        check = max(JUDGES, key=lambda c: worst["scores"].get(c, 0) / FAIL[c] if worst["scores"].get(c) == worst["scores"].get(c) else -1)
        print(f"| {fam} | {len(rows)} | {sum(r['verdict'] == 'fail' for r in rows)} | {worst['combined']:.2f} ({check}; {worst['label']}) |")
    print(f"\n{len(honest)} honest models: {sum(h['verdict'] == 'fail' for h in honest)} fail the audit ({fpr_fail:.1%}); "
          f"threshold at 1% false positives set on {len(calib)} (combined score {threshold:.3g}), "
          f"false positives on the other {len(held)}: {fpr_held:.1%}\n")
    print("| server | setting | models | images with SSIM >= 0.5 (of 16; fishing: of 1) | SSIM >= 0.9 | mean SSIM | "
          "audit fails | ROC-AUC | TPR at the 1% FPR threshold | checks that fail |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| honest mlp, the trap-weight read-out | - | {len(baseline)} | {', '.join(str(b['recovered']) for b in baseline)} | "
          f"{', '.join(str(b['near_exact']) for b in baseline)} | "
          f"{sum(sum(b['ssim']) / len(b['ssim']) for b in baseline) / max(1, len(baseline)):.2f} | - | - | - | - |")
    neg = [h["combined"] for h in held]
    settings: dict = {}
    for b in bad:
        settings.setdefault((b["server"], b["setting"]), []).append(b)
    summary = []
    for (server, setting), rows in settings.items():
        pos = [r["combined"] for r in rows]
        labels = [0] * len(neg) + [1] * len(pos)
        auc = roc_auc_score(labels, neg + pos)
        tpr = tpr_at(pos, threshold)
        fails = sum(r["verdict"] == "fail" for r in rows) / len(rows)
        recovered = [r["recovered"] for r in rows]
        mean_ssim = sum(sum(r["ssim"]) / len(r["ssim"]) for r in rows) / len(rows)
        checks = sorted({c for r in rows for c in r["failed"]})
        summary.append({"server": server, "setting": setting, "models": len(rows), "recovered": recovered,
                        "near_exact": [r["near_exact"] for r in rows],
                        "mean_ssim": mean_ssim, "audit_fails": fails, "roc_auc": auc, "tpr_at_1pct": tpr,
                        "median_combined": sorted(pos)[len(pos) // 2]})
        exact = ", ".join(str(r["near_exact"]) for r in rows)
        print(f"| {server} | {setting} | {len(rows)} | {', '.join(map(str, recovered))} | {exact} | {mean_ssim:.2f} | {fails:.2f} | "
              f"{auc:.3f} | {tpr:.2f} | {', '.join(checks) or '-'} |")
    print("\nper check, all honest models against each server's models (ROC-AUC):")
    print("| check | " + " | ".join(s for s in ("imprint", "trap weights", "fishing")) + " | worst honest score |")
    print("|---|---|---|---|---|")
    for check in FAIL:
        hs = [h["scores"].get(check, math.nan) for h in honest]
        hs = [s for s in hs if s == s]
        cells = []
        for server in ("imprint", "trap weights", "fishing"):
            ps = [b["scores"].get(check, math.nan) for b in bad if b["server"] == server]
            ps = [s for s in ps if s == s]
            cells.append(f"{roc_auc_score([0] * len(hs) + [1] * len(ps), hs + ps):.3f}" if hs and ps else "-")
        print(f"| {check} | " + " | ".join(cells) + f" | {max(hs):.3g} |" if hs else f"| {check} | - | - | - | - |")
    cpu = {}
    for h in honest:
        cpu.setdefault(h["label"].split(" ")[0], []).append(h["cpu_s"])
    print("\naudit CPU seconds per model (all checks, batch of 16), median: "
          + ", ".join(f"{k} {sorted(v)[len(v) // 2]:.2f}" for k, v in cpu.items()))
    (out / "results.json").write_text(json.dumps({"threshold": threshold, "honest_fpr_report_half": fpr_held,
                                                  "settings": summary, "honest": honest, "malicious": bad,
                                                  "honest_trap_readout": baseline}, indent=1))
    share = sum(b["recovered"] for b in baseline) / max(1, len(baseline)) / B
    plot(summary, out / "detection.png", share if baseline else None)


def plot(summary: list, path: Path, honest_share=None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"imprint": "s", "trap weights": "^", "fishing": "o"}
    for s in summary:
        success = sum(s["recovered"]) / len(s["recovered"]) / (1 if s["server"] == "fishing" else B)
        for ax, y in ((axes[0], s["tpr_at_1pct"]), (axes[1], min(s["median_combined"], 1e3))):
            ax.scatter(success, y, marker=markers[s["server"]], label=s["server"])
            ax.annotate(s["setting"], (success, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].set_ylabel("true-positive rate at 1% false positives")
    axes[1].set_ylabel("median combined detection score (audit fails at 1)")
    axes[1].set_yscale("log")
    axes[1].axhline(1.0, color="grey", lw=0.8, ls="--")
    for ax in axes:
        if honest_share is not None:
            ax.axvline(honest_share, color="tab:green", lw=0.8, ls=":", label="honest mlp, trap read-out")
        ax.set_xlabel("attack success: share of client images with SSIM >= 0.5")
        handles, labels = ax.get_legend_handles_labels()
        seen = dict(zip(labels, handles))
        ax.legend(seen.values(), seen.keys(), fontsize=8)
    fig.suptitle("Client-side audit: detection against attack success on the same round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
