"""CPU time of the audit's model checks per round (LeNet and ResNet-18), and with --calibrate the honest
scores each check's thresholds were set from (and malicious models' scores beside them).

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/audit_checks.py             # timing (target < 1 s per round)
    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/audit_checks.py --calibrate # honest and malicious scores

The model checks are those that read the weights alone (architecture, replaced layers, imprint rows, trap
weights, class-targeted last layer, transmit-SNR), what a client runs every round before it trains; the batch
checks (D-SNR, single-sample units, what would leak) are timed separately on a batch of 16 images.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from leakage.api import bundled_images
from leakage.audit import audit
from leakage.audit.run import default_checks
from leakage.engine.models import build_model
from leakage.federated.server import FishingServer, ImprintServer, TrapWeightServer

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
MODELS = [("lenet", "mnist"), ("mlp", "mnist"), ("simple_cnn", "cifar10"), ("resnet18", "cifar10")]


def trained(model, x, y, steps=5, lr=0.1):
    """``model`` after ``steps`` SGD steps (train mode) on ``(x, y)``: an honest round's change."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def timing(repeats: int) -> None:
    weight_checks = [c for c in default_checks() if not c.needs]
    batch_checks = [c for c in default_checks() if c.needs]
    for name, data in (("lenet", "mnist"), ("resnet18", "cifar10")):
        model = build_model(name, SHAPES[data], 10)
        previous = trained(model, *bundled_images(data, list(range(16))), steps=1)
        audit(model, previous=previous, checks=weight_checks)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.process_time()
            audit(model, previous=previous, checks=weight_checks)
            times.append(time.process_time() - start)
        x, y = bundled_images(data, list(range(16)))
        start = time.process_time()
        audit(model, batch=(x, y), checks=batch_checks)
        batch_time = time.process_time() - start
        print(f"{name:9s} model checks per round: {min(times):.3f} s CPU (best of {repeats}; median "
              f"{sorted(times)[len(times) // 2]:.3f} s); batch checks on 16 images: {batch_time:.2f} s CPU")


#: which malicious models each check is meant to catch (the ROC-AUC below is honest against these)
TARGETS = {"architecture": ("imprint",), "replaced layers": ("trap",), "imprint rows": ("imprint",), "trap weights": ("trap",),
           "class-targeted last layer": ("fishing",), "transmit-SNR": ("imprint", "trap", "fishing"),
           "D-SNR": ("fishing",), "single-sample units": ("trap",), "what would leak": ("imprint", "trap")}


def _score(f) -> float:
    return 1e300 if f.score == float("inf") else f.score


def malicious_models():
    """``(kind, what, model, previous, batch)`` for the malicious servers, several settings each."""
    lenet, mlp = build_model("lenet", SHAPES["mnist"], 10), build_model("mlp", SHAPES["mnist"], 10)
    x64 = bundled_images("mnist", list(range(64)))
    for k in (16, 64, 256):
        for name, base in (("lenet", lenet), ("mlp", mlp)):
            yield "imprint", f"imprint {k} bins ({name})", ImprintServer(k).for_dataset("mnist").send(base, SHAPES["mnist"]), base, x64
    for s in (0.5, 0.6, 0.7, 0.8, 0.9):
        for seed in (0, 1):
            yield "trap", f"trap weights {s} seed {seed} (mlp)", TrapWeightServer(s, seed).send(mlp, SHAPES["mnist"]), mlp, x64
    x, y = bundled_images("mnist", list(range(1000)))
    for target in (2, 7, 9):  # a batch of 16 with one image of the target class
        chosen = [int((y == target).nonzero()[0]), *(y != target).nonzero().flatten()[:15].tolist()]
        for m in (0.5, 1, 2, 4, 8, 1000):
            sent = FishingServer(target_class=target, multiplier=m).send(lenet, SHAPES["mnist"])
            yield "fishing", f"fishing class {target} x{m:g} (lenet)", sent, lenet, (x[chosen], y[chosen])


def calibrate(seeds: int) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    worst: dict[str, tuple[float, str]] = {}
    honest: dict[str, list[float]] = {}
    for name, data in MODELS:
        x, y = bundled_images(data, list(range(10 if data == "cifar10" else 64)))  # the client's batch
        # the server's model is trained elsewhere: on other images than the client's
        elsewhere = bundled_images(data, list(range(10, 20)) if data == "cifar10" else list(range(500, 564)))
        for seed in range(seeds if name != "resnet18" else max(1, seeds // 2)):
            init = build_model(name, SHAPES[data], 10, seed=seed)
            for stage, model in (("init", init), ("5 SGD steps", trained(init, *elsewhere))):
                result = audit(model, previous=init, batch=(x, y))
                for f in result.findings:
                    if f.score == f.score:
                        honest.setdefault(f.check, []).append(_score(f))
                    if f.score == f.score and f.score > worst.get(f.check, (-1.0, ""))[0]:
                        worst[f.check] = (f.score, f"{name} seed {seed} {stage}")
                    if f.verdict != "pass" and f.verdict != "skipped":
                        print(f"  honest {name} seed {seed} {stage}: {f.check} {f.verdict} ({f.reason})")
    print("worst honest score per check (models: " + ", ".join(m for m, _ in MODELS) + f"; {seeds} seeds, init and 5 SGD steps):")
    for check, (score, where) in worst.items():
        print(f"  {check:27s} {score:.4g}  ({where})")
    bad: dict[tuple[str, str], list[float]] = {}
    print("malicious models:")
    for kind, what, model, previous, batch in malicious_models():
        result = audit(model, previous=previous, batch=batch)
        for f in result.findings:
            if f.score == f.score:
                bad.setdefault((kind, f.check), []).append(_score(f))
        flagged = ", ".join(f"{f.check} {f.score:.3g} {f.verdict}" for f in result.findings if f.verdict in ("fail", "warn"))
        print(f"  {what:34s} {result.verdict:5s} {flagged}; {result.leak_line()}")
    print("\nhonest against the malicious models each check is meant for (ROC-AUC; true positives at 1% false positives,"
          " i.e. above every honest score here; the check's own fail threshold):")
    print("| check | malicious kinds | honest scores | malicious scores | ROC-AUC | TPR at 1% FPR | TPR at its fail threshold |")
    print("|---|---|---|---|---|---|---|")
    thresholds = {c.name: c.fail for c in __import__("leakage.audit.run", fromlist=["x"]).default_checks()}
    for check, kinds in TARGETS.items():
        neg = honest.get(check, [])
        pos = [v for k in kinds for v in bad.get((k, check), [])]
        if not neg or not pos:
            print(f"| {check} | {', '.join(kinds)} | {len(neg)} | {len(pos)} | - | - | - |")
            continue
        labels, scores = [0] * len(neg) + [1] * len(pos), neg + pos
        fpr, tpr, _ = roc_curve(labels, scores)
        at1 = max(t for f_, t in zip(fpr, tpr) if f_ <= 0.01)
        at_fail = sum(v >= thresholds[check] for v in pos) / len(pos)
        print(f"| {check} | {', '.join(kinds)} | {len(neg)} | {len(pos)} | {roc_auc_score(labels, scores):.3f} | "
              f"{at1:.2f} | {at_fail:.2f} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    calibrate(args.seeds) if args.calibrate else timing(args.repeats)
