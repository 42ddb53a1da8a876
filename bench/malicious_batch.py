"""Images a malicious server recovers exactly (SSIM >= 0.99 per image) against the batch size B.

    python bench/malicious_batch.py                       # B = 1, 4, 16, 64, 256 on bundled MNIST
    python bench/malicious_batch.py --sizes 64 --bins 64 256 1024

Rows: the imprint module (Robbing the Fed) with each number of bins in front of LeNet, and trap
weights (Curious Abandon Honesty) in the first layer of the 784-256-10 ``mlp``; each on one FedSGD
update of the first B bundled MNIST test images, on one FedAvg update (one local epoch: 4 SGD steps on
mini-batches of B/4 images, where B >= 4) and on the secure aggregate of 2 clients of B/2 images each (where
B >= 2). The attack is the one ``leakage fit --attack imprint|trap_weights`` runs, on the observation
the data module builds; labels are not scored here. Each true image is matched to a slot by the
Hungarian algorithm on the l2 distance (the report's matching, ``leakage.engine.metrics.match_batch``, sums
squared l2 distances instead: the two can differ only on slots no image claims clearly), then scored by
SSIM. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch
from scipy.optimize import linear_sum_assignment

from leakage.data.datamodule import VictimDataModule
from leakage.data.sources import Bundled
from leakage.federated.client import FedSGD
from leakage.federated.fedavg import FedAvg
from leakage.federated.server import ImprintServer, TrapWeightServer
from leakage.federated.defenses import SecureAggregation
from leakage.attacks.imprint import ImprintAttack
from leakage.attacks.trap_weights import TrapWeightAttack
from leakage.engine.metrics import ssim_per_image


def recovered(server: str, batch: int, protocol: str, **settings) -> tuple[int, int, float]:
    """(images with SSIM >= 0.99, images, seconds of the closed form) for one setting."""
    client = FedAvg(local_epochs=1, local_batch_size=batch // 4) if protocol == "fedavg" else FedSGD()
    clients = 2 if protocol == "secure aggregate" else 1
    maker = ImprintServer if server == "imprint" else TrapWeightServer
    dm = VictimDataModule(Bundled("mnist"), client, maker(**settings), batch_size=batch // clients, num_victims=clients)
    attack = (ImprintAttack(model="lenet") if server == "imprint" else TrapWeightAttack(model="mlp"))
    observation = dm.prepare(attack.target)
    secret = dm.secret
    if clients > 1:
        observation, secret = SecureAggregation(clients=clients).transform(observation, secret)
    attack.attach(observation)
    start = time.perf_counter()
    with torch.no_grad():
        x, _, _ = attack.solve(observation)
    seconds = time.perf_counter() - start
    hits = 0
    for recon, truth in zip(x.cpu(), secret.images):
        rows, cols = linear_sum_assignment(torch.cdist(truth.flatten(1), recon.flatten(1)).numpy())
        hits += int((ssim_per_image(recon[cols], truth[rows]) >= 0.99).sum())
    return hits, int(secret.labels.numel()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--bins", type=int, nargs="*", default=[256, 1024])
    parser.add_argument("--trap-scale", type=float, default=0.7)
    parser.add_argument("--protocols", nargs="+", default=["fedsgd", "fedavg", "secure aggregate"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [(f"imprint, {k} bins", "imprint", {"num_bins": k}) for k in args.bins]
    rows.append((f"trap weights (scale {args.trap_scale:g})", "trap_weights", {"trap_scale": args.trap_scale}))
    print("| server | protocol | " + " | ".join(f"B = {b}" for b in args.sizes) + " |")
    print("|---|---|" + "---|" * len(args.sizes))
    for name, server, settings in rows:
        for protocol in args.protocols:
            cells = []
            for b in args.sizes:
                if (protocol == "fedavg" and b < 4) or (protocol == "secure aggregate" and b < 2):
                    cells.append("")
                    continue
                n, total, seconds = recovered(server, b, protocol, **settings)
                cells.append(f"{n}/{total} ({seconds:.2f} s)")
            print(f"| {name} | {protocol} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
