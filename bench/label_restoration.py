"""Batch label restoration accuracy over batch sizes, on the bundled images.

For each dataset (CIFAR-10, MNIST: 20 bundled test images each), batch size B and strategy, draws
``--trials`` client batches of B images (with repetition: sampled with replacement, so labels
repeat; and, for B <= 20, without) and restores the label multiset from the batch's shared gradient
with an untrained LeNet (DLG's init). Prints the share of batches whose multiset is recovered
exactly, and the mean share of labels recovered (multiset overlap).

    python bench/label_restoration.py [--trials 20] [--model lenet] [--model-weights FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leakage.federated.client import client_gradients  # noqa: E402
from leakage.data.datamodule import VictimDataModule  # noqa: E402
from leakage.attacks.labels import BATCH_STRATEGIES, restore_batch_labels  # noqa: E402
from leakage.engine.metrics import label_accuracy  # noqa: E402
from leakage.engine.models import build_model  # noqa: E402
from leakage.data.sources import Bundled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--model-weights", default=None)
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    args = ap.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    print("| dataset | sampling | B | " + " | ".join(f"{s} exact / label acc" for s in BATCH_STRATEGIES) + " |")
    print("|---" * (3 + len(BATCH_STRATEGIES)) + "|")
    for ds in ("cifar10", "mnist"):
        dm = VictimDataModule(Bundled(ds), num_victims=20)
        model = build_model(args.model, dm.input_shape, dm.num_classes, weights=args.model_weights)
        secret = dm.load_victims()
        x, y = secret.images[:, 0], secret.labels[:, 0]
        for replace in (True, False):
            for B in sizes:
                if not replace and B > len(y):
                    continue
                gen = torch.Generator().manual_seed(B)
                idx = torch.stack([torch.randint(0, len(y), (B,), generator=gen) if replace
                                   else torch.randperm(len(y), generator=gen)[:B] for _ in range(args.trials)])
                grads = client_gradients(model, x[idx], y[idx])
                cells = []
                for strategy in BATCH_STRATEGIES:
                    try:
                        rec = restore_batch_labels(model, grads, B, dm.input_shape, strategy)
                    except ValueError:
                        cells.append("n/a")
                        continue
                    exact = (rec == y[idx].sort(dim=1).values).all(dim=1).float().mean()
                    acc = label_accuracy(rec, y[idx]).mean()
                    cells.append(f"{100 * exact:.0f}% / {100 * acc:.1f}%")
                print(f"| {ds} | {'drawn with replacement' if replace else 'distinct images'} | {B} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
