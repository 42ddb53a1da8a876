"""What would leak: the attack the audit fears, run by the client on its own batch with the received model.

The client computes the update it would share (FedSGD, the mean cross-entropy of its batch, train mode)
and runs a malicious server's closed-form read-out on it: the imprint read-out
(:class:`~leakage.attacks.imprint.ImprintAttack`) on a layer whose rows share one direction, else the
trap-weight read-out (:class:`~leakage.attacks.trap_weights.TrapWeightAttack`) on a fully connected first
layer (it reads every first-layer unit that fired for one input, trap weights or not). The client knows
its batch, so it counts what came back: an image of its batch that some recovered row equals to
``tolerance`` (relative l2) is isolated. A count is what this read-out recovers, a lower bound on what the
server could: an optimisation attack may take more.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from leakage.audit.base import Check, Finding, Received
from leakage.audit.structure import ImprintRows
from leakage.engine.models import first_linear, num_logits
from leakage.federated.client import client_gradients
from leakage.federated.server import MAX_BINS, ImprintServer, TrapWeightServer
from leakage.records import Observation


def isolated(recon: Tensor, truth: Tensor, tolerance: float) -> Tensor:
    """``[B]``: whether each of ``truth`` ``[B, ...]`` is held by some row of ``recon`` ``[n, ...]`` to
    ``tolerance`` relative l2 distance."""
    if recon.shape[0] == 0:
        return torch.zeros(truth.shape[0], dtype=torch.bool)
    distance = torch.cdist(truth.flatten(1).double(), recon.flatten(1).double(), compute_mode="donot_use_mm_for_euclid_dist")
    return distance.min(dim=1).values <= tolerance * truth.flatten(1).double().norm(dim=1).clamp_min(1e-12)


class WhatLeaks(Check):
    """Run the feared closed-form attack on the client's own batch and count the samples it gives back
    exactly (module docstring). Score: the fraction of the batch isolated.

    What comes back is the batch's exposure, which honest models have too: a fully connected first layer
    gives back a batch of one whole (the analytic attack), and honest ``mlp`` measured 3 of 64 MNIST images
    (init and 5 SGD steps) but 6 of 16 after 3 steps, through units that happen to fire for one image;
    ``lenet`` and ``resnet18`` have no fully connected first layer (nothing read). Malicious: trap weights of
    scale 0.7 on ``mlp`` give back 21 of 64, an imprint module of 256 bins in front of ``lenet`` 56 of 64. So it
    warns at 0.25 and never fails by default (``fail=inf``): the design checks judge intent; this says what
    it costs you.

    Args:
        warn: the score from which the check warns.
        fail: the score from which it fails (``inf``: never).
        tolerance: a sample is given back when a recovered row is within this relative l2 distance of it.
    """

    name = "what would leak"
    needs = ("batch",)

    def __init__(self, warn: float = 0.25, fail: float = math.inf, tolerance: float = 1e-3) -> None:
        super().__init__(warn, fail)
        self.tolerance = float(tolerance)

    def run(self, received: Received) -> Finding:
        model, x, y = received.model, received.x, received.y
        if model is None or x is None:
            return self.skipped(received.unrunnable or "no client batch given (--batch, or batch= in Python)")
        imprint = ImprintRows().run(received)
        if imprint.verdict == "fail" and 2 <= imprint.details["rows"] <= MAX_BINS:
            from leakage.attacks.imprint import ImprintAttack

            server, attack_cls = ImprintServer(num_bins=imprint.details["rows"]), ImprintAttack
            server.layer = imprint.details["layer"]
            what = f"the imprint read-out of {server.layer!r}"
        else:
            try:
                layer, _ = first_linear(model, tuple(x.shape[1:]), attack="this read-out")
            except ValueError:
                return self.found(0.0, "no closed-form read-out applies (no imprint rows, no fully connected first layer): "
                                  "nothing read", attack=None, isolated=0, batch=int(x.shape[0]))
            from leakage.attacks.trap_weights import TrapWeightAttack

            server, attack_cls = TrapWeightServer(), TrapWeightAttack
            server.layer = layer
            what = f"the trap-weight read-out of {layer!r}"
        server.model = model
        K = num_logits(model, tuple(x.shape[1:]))
        grads = client_gradients(model, x[None], y[None], "train")
        lo, hi = float(x.min()), float(x.max())
        data_range = (min(0.0, lo), max(1.0, hi))
        observation = Observation(grads, int(x.shape[0]), tuple(x.shape[1:]), K, data_range, server=server)
        attack = attack_cls(model=model, input_shape=tuple(x.shape[1:]), num_classes=K)
        try:
            attack.attach(observation)
            with torch.no_grad():
                recon = attack.solve(observation)[0][0]
        except (ValueError, RuntimeError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            return self.skipped(f"{what} could not run: {reason}")
        hits = isolated(recon.cpu(), x, self.tolerance)
        n, B = int(hits.sum()), int(x.shape[0])
        return self.found(n / B, f"{what} gives back {n} of your {B} samples exactly", attack=attack_cls.__name__,
                          layer=server.layer, isolated=n, batch=B, samples=hits.nonzero().flatten().tolist())

    def settings(self) -> dict:
        return {**super().settings(), "tolerance": self.tolerance}

