"""The checks that run the received model on the client's own batch: D-SNR per layer and first-layer
units that fire for exactly one sample (:mod:`leakage.audit.base`).

Per-example gradients come from ``torch.func`` (``vmap`` over the batch's samples, one sample per
problem, as :func:`leakage.federated.client.per_problem_gradients` computes an update), in chunks so that
only each layer's per-example row norms are kept. BatchNorm runs in eval mode here: one sample's
gradient is not defined under batch statistics, which tie the samples together.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from leakage.audit.base import Check, Finding, Received, row_snr
from leakage.engine.models import first_linear
from leakage.federated.client import client_view, per_problem_gradients

#: samples whose gradients are computed at once (memory: a chunk holds that many copies of the gradient)
CHUNK = 8


def per_example_row_norms(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """``{layer: [B, units]}``: the norm of each sample's gradient on each unit of each layer (a weight's
    row, with its bias entry), the loss the client's cross-entropy of that sample alone."""
    net = client_view(model, "eval")
    names = dict(model.named_parameters())
    layers = {}
    for n, p in names.items():
        prefix = n.rpartition(".")[0]
        if n.endswith("weight") and p.dim() >= 1:
            layers[prefix] = (n, prefix + ".bias" if prefix + ".bias" in names else None)
    out: dict[str, list[Tensor]] = {k: [] for k in layers}
    for start in range(0, x.shape[0], CHUNK):
        xs, ys = x[start:start + CHUNK, None], y[start:start + CHUNK, None]
        with torch.no_grad():
            grads = per_problem_gradients(model, xs, ys, forward=net)
        for layer, (w, b) in layers.items():
            sq = grads[w].flatten(2).square().sum(dim=2) if grads[w].dim() > 2 else grads[w].square()
            if b is not None:
                sq = sq + grads[b].square()
            out[layer].append(sq.sqrt())
    return {k: torch.cat(v) for k, v in out.items()}


class DSNR(Check):
    """The data signal-to-noise ratio of the client's update (SEER, Garov et al., ICLR 2024), per layer: the
    largest per-sample gradient norm over the sum of the other samples' (each sample's cross-entropy alone,
    in eval mode). A model built to steal one sample makes one sample's gradient outweigh the batch (fishing,
    imprint and trap units); honest models spread it. The score is the largest over layers; ``per_unit``
    gives, beside it, the same ratio per unit (row), which a unit that fires for one sample drives up in
    honest ReLU models too, so it is reported, not judged.

    Honest built-ins measured (the calibration of :mod:`leakage.audit.structure`): layer D-SNR at most 0.58
    (ResNet-18 after 5 SGD steps, audited on 10 CIFAR-10 images). Warn at 1, fail at 2 (one sample's gradient twice the
    rest of the batch together). A small batch has few others to outweigh: honest ResNet-18 measured 2.3 on 4
    CIFAR-10 images, so below ``min_batch`` (16) samples the check warns at most.

    Args:
        warn: the score from which the check warns.
        fail: the score from which it fails (``inf``: never).
        min_batch: the batch size from which the check may fail.
    """

    name = "D-SNR"
    needs = ("batch",)

    def __init__(self, warn: float = 1.0, fail: float = 2.0, min_batch: int = 16) -> None:
        super().__init__(warn, fail)
        self.min_batch = int(min_batch)

    def settings(self) -> dict:
        return {**super().settings(), "min_batch": self.min_batch}

    def run(self, received: Received) -> Finding:
        if received.model is None or received.x is None:
            return self.skipped(received.unrunnable or "no client batch given (--batch, or batch= in Python)")
        if received.x.shape[0] < 2:
            return self.skipped("a batch of one sample: its gradient is all signal")
        norms = per_example_row_norms(received.model, received.x, received.y)
        layers, units = {}, {}
        for layer, n in norms.items():
            total = n.square().sum(dim=1).sqrt()  # [B]: each sample's gradient norm on the layer
            layers[layer], sample = row_snr(total)
            n = n.double()
            top, total_u = n.max(dim=0).values, n.sum(dim=0)  # [units]
            live = total_u > 1e-7 * float(n.max()) if n.numel() else total_u > 0
            rest = (total_u - top)[live]
            snr = torch.where(rest > 0, top[live] / rest.clamp_min(1e-300), torch.full_like(rest, math.inf))
            units[layer] = float(snr.max()) if snr.numel() else 0.0
        worst = max(layers, key=lambda k: layers[k])
        sample = int(norms[worst].square().sum(dim=1).argmax())
        ranked = dict(sorted(layers.items(), key=lambda kv: -kv[1]))
        B = received.x.shape[0]
        found = self.found(layers[worst], f"layer {worst!r}: sample {sample}'s gradient is {layers[worst]:.3g} times the "
                           f"other {B - 1} samples' together", layer=worst, sample=sample, per_layer=ranked, per_unit=units)
        if B < self.min_batch and found.verdict == "fail":
            found.verdict = "warn"
            found.reason += f" (a batch of {B}: judged from {self.min_batch} samples, warns at most)"
        return found


class SingleSampleUnits(Check):
    """First-layer units that fire for exactly one sample of the client's batch: such a unit's gradient
    row is that sample times a number (``dW_i / db_i`` gives it back), which trap weights arrange for many
    units. Only for a fully connected first layer fed the input (a ReLU unit fires where its
    pre-activation is positive).

    Score: the fraction of the batch that some unit isolates. It measures how exposed this batch is, not
    what the server meant: it grows as the batch shrinks, for honest models too (honest ``mlp`` measured:
    at most 3 of 64 MNIST images at init and after 5 SGD steps, but 10 of 16 after 3 steps; trap weights
    of scale 0.7 isolate 23 of 64). So it warns (at 0.3) and never fails by default (``fail=inf``); the
    trap-weight check judges the design.

    Args:
        warn: the score from which the check warns.
        fail: the score from which it fails (``inf``: never).
    """

    name = "single-sample units"
    needs = ("batch",)

    def __init__(self, warn: float = 0.3, fail: float = math.inf) -> None:
        super().__init__(warn, fail)

    def run(self, received: Received) -> Finding:
        if received.model is None or received.x is None:
            return self.skipped(received.unrunnable or "no client batch given (--batch, or batch= in Python)")
        try:
            name, layer = first_linear(received.model, received.input_shape, attack="this check")
        except ValueError:
            return self.skipped("the first layer is not fully connected on the input")
        with torch.no_grad():
            z = received.x.flatten(1).to(layer.weight) @ layer.weight.T + layer.bias  # [B, units]
        fires = z > 0
        single = fires.sum(dim=0) == 1
        owners = torch.unique(fires[:, single].float().argmax(dim=0)) if bool(single.any()) else torch.zeros(0)
        B = received.x.shape[0]
        frac = owners.numel() / B
        return self.found(frac, f"{int(single.sum())} units of {name!r} fire for exactly one sample, isolating "
                          f"{owners.numel()} of the {B} samples", layer=name, units=int(single.sum()),
                          isolated=owners.numel(), batch=B)
