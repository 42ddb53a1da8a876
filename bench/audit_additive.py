"""A trap-weight server that adds its rows to the trained first layer instead of replacing it: what the audit
says and what the read-out still takes (the limit of :class:`~leakage.audit.ReplacedLayers`).

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/audit_additive.py

The server scales :class:`~leakage.federated.server.TrapWeightServer`'s rows ``T`` to ``c`` times the norm of the
previous round's layer ``P`` and sends ``P + T`` (the bias kept), for ``c`` 1, 3 and 10; the client audits it
against ``P`` on a batch of 16 bundled MNIST images and the trap-weight read-out runs on its update (SSIM per
image, as in ``bench/audit_detection.py``).
"""

from __future__ import annotations

import warnings

import torch

import leakage
from audit_zoo import SHAPES, _attack, client_batch, fresh
from leakage.federated.server import TrapWeightServer

SHOWN = ("architecture", "replaced layers", "trap weights")


def main() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print("| trap scale | T / P | seed | SSIM >= 0.5 (of 16) | SSIM >= 0.9 | audit | " + " | ".join(SHOWN) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(SHOWN))
    for scale in (0.7, 0.95, 0.99):
        for c in (1.0, 3.0, 10.0):
            for seed in (0, 1):
                x, y = client_batch("mnist", 30 + seed)
                previous = fresh("mlp", 10 + seed)
                server = TrapWeightServer(trap_scale=scale, seed=seed)
                sent = server.send(previous, SHAPES["mnist"])
                trap, kept = sent.net[1].weight.detach().clone(), previous.net[1].weight.detach()
                with torch.no_grad():
                    sent.net[1].weight.copy_(kept + trap * (c * kept.norm() / trap.norm()))
                    sent.net[1].bias.copy_(previous.net[1].bias)
                ssim = _attack(sent, server, x, y, "trap_weights")
                result = leakage.audit(sent, previous=previous, batch=(x, y))
                cells = [f"{result[k].score:.3g} {result[k].verdict}" for k in SHOWN]
                print(f"| {scale:g} | {c:g} | {seed} | {int((ssim >= 0.5).sum())} | {int((ssim >= 0.9).sum())} | "
                      f"{result.verdict} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
