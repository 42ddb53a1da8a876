"""iLRG against bias_count: instance labels of batches of B = 1 to 512, untrained and trained models.

For each model (``mlp``, ``lenet``: the built-ins, seed 1234), state (untrained; trained) and
batch size B, draws ``--trials`` batches of B distinct images and restores their labels from the
batch's shared gradient (one cross-entropy gradient averaged over the batch, as the client sends)
with ``ilrg`` and ``bias_count`` (:func:`leakage.attacks.labels.restore_batch_labels`). Prints, per
strategy, the share of labels recovered (multiset overlap, ``leakage.engine.metrics.label_accuracy``) and
the share of batches whose labels all come back.

- MNIST: the 1,000 bundled test images (indices 0-999), B = 1, 2, 4, ..., 512.
- CIFAR-10: the 20 bundled test images, B = 1 to 16, untrained only.
- Trained: the model trained on the same 1,000 bundled MNIST images before the attack, with
  ``--epochs`` epochs (default 5) of Adam (lr 3e-3, mini-batches of 32 shuffled with seed 0,
  cross-entropy); its training accuracy is printed.

Cells read "labels recovered / batches with every label right", as means over the trials.

    python bench/ilrg.py [--trials 20] [--epochs 5] [--models mlp,lenet]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leakage.federated.client import client_gradients  # noqa: E402
from leakage.data.datamodule import VictimDataModule, bundled_array  # noqa: E402
from leakage.attacks.labels import restore_batch_labels  # noqa: E402
from leakage.engine.metrics import label_accuracy  # noqa: E402
from leakage.engine.models import build_model  # noqa: E402
from leakage.data.sources import Bundled

STRATEGIES = ("ilrg", "bias_count")


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    """Adam on the images (lr 3e-3, batches of 32, seed 0); returns the training accuracy."""
    gen = torch.Generator().manual_seed(0)
    model.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def cells(model, x, y, sizes, trials) -> dict[int, list[str]]:
    """``{B: [cell per strategy]}`` over ``trials`` batches of B distinct images (seeded by B)."""
    out = {}
    for B in sizes:
        gen = torch.Generator().manual_seed(B)
        idx = torch.stack([torch.randperm(len(y), generator=gen)[:B] for _ in range(trials)])
        grads = client_gradients(model, x[idx], y[idx])
        out[B] = []
        for strategy in STRATEGIES:
            acc = label_accuracy(restore_batch_labels(model, grads, B, tuple(x.shape[1:]), strategy), y[idx])
            out[B].append(f"{100 * acc.mean():.1f}% / {100 * (acc == 1).float().mean():.0f}%")
    return out


def table(title: str, columns: dict[str, dict[int, list[str]]]) -> None:
    print(f"\n{title}\n")
    print("| B | " + " | ".join(f"{c}: {s}" for c in columns for s in STRATEGIES) + " |")
    print("|---" * (1 + len(columns) * len(STRATEGIES)) + "|")
    for B in next(iter(columns.values())):
        print(f"| {B} | " + " | ".join(cell for col in columns.values() for cell in col[B]) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--models", default="mlp,lenet")
    args = ap.parse_args()
    names = args.models.split(",")
    x, y = bundled_array("mnist")
    mnist = {}
    for name in names:
        model = build_model(name, tuple(x.shape[1:]), 10)
        mnist[f"{name} untrained"] = cells(model, x, y, [2 ** k for k in range(10)], args.trials)
        acc = train(model, x, y, args.epochs)
        mnist[f"{name} trained ({100 * acc:.0f}% train acc)"] = cells(model, x, y, [2 ** k for k in range(10)],
                                                                      args.trials)
    table(f"MNIST, the 1,000 bundled images; trained: {args.epochs} epochs of Adam on them", mnist)
    secret = VictimDataModule(Bundled("cifar10"), num_victims=20).load_victims()
    x, y = secret.images[:, 0], secret.labels[:, 0]
    cifar = {f"{name} untrained": cells(build_model(name, tuple(x.shape[1:]), 10), x, y, [1, 2, 4, 8, 16], args.trials)
             for name in names}
    table("CIFAR-10, the 20 bundled images", cifar)


if __name__ == "__main__":
    main()
