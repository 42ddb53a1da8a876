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
against the fished one. An image with SSIM >= 0.5 is reconstructed, one with SSIM >= 0.9 nearly exactly. The
baseline row is the trap-weight read-out of honest ``mlp`` models' first layer: what the same attack gets
without trap weights.

The detection score of a model is the audit's combined one: the largest ``score / fail`` over the checks
that can fail (the audit fails at 1). The threshold at 1% false positives is set on one half of the honest
zoo (calibration) and the rates are reported on the other half; ROC-AUC is the report half against each
setting. Every model is audited twice: with the previous round the client trained (malicious: the model the
server modified, or the round before the server's honest FedAvg round; honest: its real previous round, none for
a random initialisation) and without it (the checks that read it skipped), each with its own threshold. Two probes
beside the zoo: honest rounds at high learning rates (audited, not in the threshold), and a test of the client's
batch the audit does not run (first-layer units against their sign-flipped rows). Writes ``results.json`` (every model's scores) and ``detection.png``
(detection against the share of images reconstructed at SSIM >= 0.9) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from audit_zoo import B, DATA, TORCHVISION, client_batch, fresh, high_rate_zoo, honest_readout, honest_zoo, malicious_zoo, \
    train_pool
from leakage.audit import audit
from leakage.audit.run import default_checks

RECONSTRUCTS = 0.5
NEAR_EXACT = 0.9

JUDGES = [c.name for c in default_checks() if math.isfinite(c.fail)]
FAIL = {c.name: c.fail for c in default_checks()}


def scored(model, previous, architecture, batch) -> dict:
    start = time.process_time()
    result = audit(model, previous=previous, architecture=architecture, batch=batch)
    scores = {f.check: (1e300 if f.score == math.inf else f.score) for f in result.findings}
    combined = max((scores[c] / FAIL[c] for c in JUDGES if scores.get(c) == scores.get(c)), default=0.0)
    return {"verdict": result.verdict, "combined": combined, "scores": scores, "cpu_s": time.process_time() - start,
            "failed": [f.check for f in result.failed], "min_cosine": lowest_cosine(model, previous),
            "flip_z": flip_z(model, batch)}


def flip_z(model, batch) -> float:
    """A test of the client's batch that the audit does not run (it fails honest models trained at high rates):
    for each unit of a fully connected first layer, the share of the batch its sign-flipped row fires for less
    the share its row fires for; the z-score of the mean over units (NaN without such a layer)."""
    from leakage.engine.models import first_linear

    x = batch[0]
    try:
        _, layer = first_linear(model, tuple(x.shape[1:]), attack="the flip test")
    except ValueError:
        return math.nan
    with torch.no_grad():
        z, bias = x.flatten(1) @ layer.weight.T, layer.bias
        gain = ((bias - z > 0).double() - (z + bias > 0).double()).mean(dim=0)
    return float(gain.mean() / (gain.std() / math.sqrt(gain.numel())))


def lowest_cosine(model, previous) -> float:
    """The lowest cosine between a weight matrix and the previous round's (NaN without a previous round)."""
    if previous is None:
        return math.nan
    old, cosines = previous.state_dict(), []
    for name, w in model.state_dict().items():
        if w.dim() >= 2 and name in old and old[name].shape == w.shape:
            cosines.append(float(F.cosine_similarity(w.double().flatten(), old[name].double().flatten(), dim=0)))
    return min(cosines, default=math.nan)


def alone(row: dict) -> dict:
    """The part of a row the second audit (without the previous round) keeps."""
    return {k: row[k] for k in ("verdict", "combined", "failed", "scores")}


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
        pinned, batch = fresh(name, 0), client_batch(data, i)
        row = scored(model, previous, pinned, batch)
        without = row if previous is None else scored(model, None, pinned, batch)
        honest.append({"family": family, "label": label, **row, "without_previous": alone(without)})
        for what, r in (("", row), (" (without the previous round)", without)):
            if r["verdict"] == "fail":
                print(f"  honest model fails{what}: {label}: {', '.join(r['failed'])}", flush=True)
    print(f"{len(honest)} honest models audited ({time.perf_counter() - begin:.0f} s)", flush=True)
    fast = []
    for i, (family, label, model, previous) in enumerate(high_rate_zoo(args.quick)):
        name = label.split(" ")[0]
        row = scored(model, previous, fresh(name, 0), client_batch(DATA[name], i))
        fast.append({"label": label, **row, "loss": final_loss(model, name)})
    bad = []
    for server, setting, label, model, previous, batch, ssim in malicious_zoo(args.quick):
        row = scored(model, previous, previous, batch)
        without = alone(scored(model, None, previous, batch))
        bad.append({"server": server, "setting": setting, "label": label, "ssim": ssim.tolist(),
                    "recovered": int((ssim >= RECONSTRUCTS).sum()), "near_exact": int((ssim >= NEAR_EXACT).sum()), **row,
                    "without_previous": without})
    print(f"{len(bad)} malicious models attacked and audited ({time.perf_counter() - begin:.0f} s)\n", flush=True)
    baseline = [{"label": label, "ssim": ssim.tolist(), "recovered": int((ssim >= RECONSTRUCTS).sum()),
                 "near_exact": int((ssim >= NEAR_EXACT).sum())} for label, ssim in honest_readout(args.quick)]
    report(honest, bad, baseline, out, fast)
    print(f"\nwall time {time.perf_counter() - begin:.0f} s; results in {out}/results.json, plot {out}/detection.png")


def final_loss(model, name: str) -> float:
    """The model's cross-entropy on its training pool (a diverged run's is large or NaN)."""
    x, y = train_pool(DATA[name])
    with torch.no_grad():
        return float(F.cross_entropy(model(x[:256]), y[:256]))


def report(honest: list, bad: list, baseline: list, out: Path, fast: list) -> None:
    from sklearn.metrics import roc_auc_score

    calib, held = honest[0::2], honest[1::2]  # calibrate on one half, report on the other
    threshold, fpr_held = cut([h["combined"] for h in calib], [h["combined"] for h in held])
    threshold_alone, fpr_alone = cut([h["without_previous"]["combined"] for h in calib],
                                     [h["without_previous"]["combined"] for h in held])
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
          f"false positives on the other {len(held)}: {fpr_held:.1%}. Without the previous round: "
          f"{sum(h['without_previous']['verdict'] == 'fail' for h in honest)} fail; threshold {threshold_alone:.3g}, false "
          f"positives on the report half {fpr_alone:.1%} (the lowest cosine of an honest layer with the previous round's: "
          f"{min(h['min_cosine'] for h in honest if h['min_cosine'] == h['min_cosine']):.3f}, over "
          f"{sum(h['min_cosine'] == h['min_cosine'] for h in honest)} models with a previous round)\n")
    print("| server | setting | models | images with SSIM >= 0.5 (of 16; fishing: of 1) | SSIM >= 0.9 | mean SSIM | "
          "audit fails | ROC-AUC | TPR at the 1% FPR threshold | checks that fail | without the previous round: "
          "audit fails | ROC-AUC | TPR at 1% FPR |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| honest mlp, the trap-weight read-out | - | {len(baseline)} | {', '.join(str(b['recovered']) for b in baseline)} | "
          f"{', '.join(str(b['near_exact']) for b in baseline)} | "
          f"{sum(sum(b['ssim']) / len(b['ssim']) for b in baseline) / max(1, len(baseline)):.2f} | - | - | - | - | - | - | - |")
    neg = [h["combined"] for h in held]
    neg_alone = [h["without_previous"]["combined"] for h in held]
    settings: dict = {}
    for b in bad:
        settings.setdefault((b["server"], b["setting"]), []).append(b)
    summary = []
    for (server, setting), rows in settings.items():
        pos = [r["combined"] for r in rows]
        labels = [0] * len(neg) + [1] * len(pos)
        auc = roc_auc_score(labels, neg + pos)
        tpr = tpr_at(pos, threshold)
        pos_alone = [r["without_previous"]["combined"] for r in rows]
        auc_alone = roc_auc_score([0] * len(neg_alone) + [1] * len(pos_alone), neg_alone + pos_alone)
        tpr_alone = tpr_at(pos_alone, threshold_alone)
        fails_alone = sum(r["without_previous"]["verdict"] == "fail" for r in rows) / len(rows)
        fails = sum(r["verdict"] == "fail" for r in rows) / len(rows)
        recovered = [r["recovered"] for r in rows]
        mean_ssim = sum(sum(r["ssim"]) / len(r["ssim"]) for r in rows) / len(rows)
        checks = sorted({c for r in rows for c in r["failed"]})
        summary.append({"server": server, "setting": setting, "models": len(rows), "recovered": recovered,
                        "near_exact": [r["near_exact"] for r in rows],
                        "mean_ssim": mean_ssim, "audit_fails": fails, "roc_auc": auc, "tpr_at_1pct": tpr,
                        "without_previous": {"audit_fails": fails_alone, "roc_auc": auc_alone, "tpr_at_1pct": tpr_alone,
                                             "median_combined": sorted(pos_alone)[len(pos_alone) // 2]},
                        "median_combined": sorted(pos)[len(pos) // 2]})
        exact = ", ".join(str(r["near_exact"]) for r in rows)
        print(f"| {server} | {setting} | {len(rows)} | {', '.join(map(str, recovered))} | {exact} | {mean_ssim:.2f} | {fails:.2f} | "
              f"{auc:.3f} | {tpr:.2f} | {', '.join(checks) or '-'} | {fails_alone:.2f} | {auc_alone:.3f} | {tpr_alone:.2f} |")
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
    print("\nhonest rounds at high learning rates (not in the zoo above), each against its previous round:")
    print("| model | loss on its training pool | replaced layers score | checks that fail |")
    print("|---|---|---|---|")
    for f in fast:
        print(f"| {f['label']} | {f['loss']:.3g} | {f['scores'].get('replaced layers', math.nan):.3g} | {', '.join(f['failed']) or '-'} |")
    flips = [h["flip_z"] for h in honest if h["flip_z"] == h["flip_z"]]
    print(f"\nthe flip test on the client's batch (not in the audit; fully connected first layers only): honest zoo "
          f"{len(flips)} models, at most z = {max(flips, default=math.nan):.3g}; high learning rates: "
          + ", ".join(f"{f['flip_z']:.3g}" for f in fast if f["flip_z"] == f["flip_z"]) + "; trap weights: "
          + "; ".join(f"{k} {min(v):.3g} to {max(v):.3g}" for k, v in trap_flips(bad).items()))
    cpu = {}
    for h in honest:
        cpu.setdefault(h["label"].split(" ")[0], []).append(h["cpu_s"])
    print("\naudit CPU seconds per model (all checks, batch of 16), median: "
          + ", ".join(f"{k} {sorted(v)[len(v) // 2]:.2f}" for k, v in cpu.items()))
    (out / "results.json").write_text(json.dumps({"threshold": threshold, "honest_fpr_report_half": fpr_held,
                                                  "threshold_without_previous": threshold_alone,
                                                  "honest_fpr_report_half_without_previous": fpr_alone,
                                                  "settings": summary, "honest": honest, "malicious": bad,
                                                  "honest_trap_readout": baseline, "high_learning_rates": fast}, indent=1))
    share = sum(b["near_exact"] for b in baseline) / max(1, len(baseline)) / B
    plot(summary, out / "detection.png", share if baseline else None)


def trap_flips(bad: list) -> dict:
    out: dict = {}
    for b in bad:
        if b["server"] == "trap weights":
            out.setdefault(b["setting"], []).append(b["flip_z"])
    return out


def cut(calibration: list, report: list) -> tuple[float, float]:
    """The threshold above all but 1% of the calibration half's scores, and the false-positive rate it gives on
    the report half."""
    ranked = sorted(calibration, reverse=True)
    threshold = ranked[int(0.01 * len(ranked))] * (1 + 1e-9) + 1e-12
    return threshold, tpr_at(report, threshold)


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
    colors = {"imprint": "tab:blue", "trap weights": "tab:orange", "fishing": "tab:purple"}
    for s in summary:
        success = sum(s["near_exact"]) / len(s["near_exact"]) / (1 if s["server"] == "fishing" else B)
        alone = s["without_previous"]
        for ax, y, y_alone in ((axes[0], s["tpr_at_1pct"], alone["tpr_at_1pct"]),
                               (axes[1], min(s["median_combined"], 1e3), min(alone["median_combined"], 1e3))):
            ax.scatter(success, y, marker=markers[s["server"]], color=colors[s["server"]], label=s["server"])
            ax.scatter(success, y_alone, marker=markers[s["server"]], facecolors="none", edgecolors=colors[s["server"]],
                       label=f"{s['server']}, without the previous round")
            if s["server"] == "trap weights":  # the settings the previous round decides: named where they sit without it
                name = s["setting"].replace("scale ", "").replace(", after a FedAvg round", "+")
                ax.annotate(name, (success, y_alone), fontsize=7, xytext=(3, -9), textcoords="offset points")
            elif ax is axes[1]:
                ax.annotate(s["setting"], (success, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].set_ylabel("true-positive rate at 1% false positives")
    axes[1].set_ylabel("median combined detection score (audit fails at 1)")
    axes[1].set_yscale("log")
    axes[1].axhline(1.0, color="grey", lw=0.8, ls="--")
    for ax, corner in zip(axes, ("lower right", "upper left")):
        if honest_share is not None:
            ax.axvline(honest_share, color="tab:green", lw=0.8, ls=":", label="honest mlp, the trap read-out")
        ax.set_xlabel("attack success: share of images at SSIM >= 0.9 (fishing: of 1)")
        handles, labels = ax.get_legend_handles_labels()
        seen = dict(zip(labels, handles))
        ax.legend(seen.values(), seen.keys(), fontsize=7, loc=corner, framealpha=0.9)
    fig.suptitle("Client-side audit: detection against attack success on the same round\n(hollow: without the previous "
                 "round; trap scales named, +: planted after an honest FedAvg round)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
