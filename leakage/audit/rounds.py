"""The check that reads the previous round: layers replaced rather than trained (:mod:`leakage.audit.base`).

A client holds the global model it trained last round. Training moves a layer by an update and keeps what it
had; a server that plants weights of its own (trap weights, When the Curious Abandon Honesty) throws the layer's
previous weights away. The check measures how much of each layer's previous weights the received layer still
holds, a number that does not grow with the learning rate the way the size of the change does.
"""

from __future__ import annotations

import math

import torch

from leakage.audit.base import Check, Finding, Received


class ReplacedLayers(Check):
    """Layers whose previous weights are gone: replaced, not trained, since the previous round (a trap-weight
    server's first layer, or any layer a server re-initialised).

    Score: the largest share of a layer's previous weights that the received layer has dropped,
    ``1 - <W, P> / <P, P>`` for the received weight ``W`` and the previous round's ``P`` (every weight matrix or
    convolution both hold with one shape; a layer whose previous weights are all zero is not read). A trained
    layer is ``P`` plus an update, and gradient steps point nearly across ``P``, not against it: its share stays
    near 0 even where the update is as large as ``P`` (weight decay drops ``lr * decay`` per step). A layer
    replaced by weights of its own, which owe nothing to ``P``, scores about 1, whatever their scale.

    Measured (``bench/audit_detection.py``, each model against the round before it): the benchmark's 115 honest
    rounds (SGD epochs and steps, FedAvg rounds, Opacus DP-SGD, at rate 0.1 or 0.05) at most 0.056 (ResNet-18
    after an epoch of SGD); rounds at rates five and ten times that (SGD at rate 1 from initialisation, FedAvg at
    local rate 0.5) at most 0.71 (a simple CNN after 3 SGD steps at rate 1); trap weights of every scale from 0.5
    to 0.99, planted in a fresh ``mlp`` or after an honest FedAvg round, at least 0.997. Warn at 0.5, fail at 0.9.
    A server that adds its weights to the previous ones instead of replacing them keeps this share near 0; the
    size of such a change shows as a low cosine with the previous round (``cosine`` in the details;
    :class:`~leakage.audit.ArchitectureDrift` warns below 0.5). A federation that re-initialises a layer on purpose
    (a new classifier head) fails it too: such a client passes ``ReplacedLayers(fail=math.inf)`` among its checks.

    Args:
        warn: the score from which the check warns.
        fail: the score from which it fails (``inf``: never).
    """

    name = "replaced layers"

    def __init__(self, warn: float = 0.5, fail: float = 0.9) -> None:
        super().__init__(warn, fail)

    def run(self, received: Received) -> Finding:
        if received.previous is None:
            return self.skipped("no previous round given (--previous, or previous= in Python): nothing to compare with")
        dropped = {}
        for name, w in received.state.items():
            old = received.previous.get(name)
            if w.dim() < 2 or not w.is_floating_point() or old is None or tuple(old.shape) != tuple(w.shape):
                continue
            p, w = old.double().flatten(), w.double().flatten()
            held = float(p @ p)
            if not (held > 0 and math.isfinite(held)):
                continue
            share = 1.0 - float(w @ p) / held
            cosine = float(torch.nn.functional.cosine_similarity(w, p, dim=0))
            dropped[name] = (share if math.isfinite(share) else math.inf, cosine)
        if not dropped:
            return self.skipped("no weight matrix of the received model has a non-zero one of the same name and shape "
                                "in the previous round")
        worst = max(dropped, key=lambda k: dropped[k][0])
        share, cosine = dropped[worst]
        replaced = sorted(k for k, (s, _) in dropped.items() if s >= self.warn)
        details = {"layer": worst, "dropped": share, "cosine": cosine, "layers": len(dropped), "replaced": replaced,
                   "per_layer": {k: round(s, 4) for k, (s, _) in sorted(dropped.items(), key=lambda kv: -kv[1][0])}}
        what = (f"{worst!r} dropped {share:.0%} of its previous round's weights (cosine {cosine:.3f} with them)"
                if share >= 0 else f"{worst!r} kept all of its previous round's weights and grew along them")
        if self.verdict(share) == "pass":
            return self.found(share, f"every layer of {len(dropped)} kept its previous weights: the most changed, " + what,
                              **details)
        if self.verdict(share) == "warn":
            return self.found(share, f"{what}: trained hard, or partly replaced", **details)
        gone = [k for k in replaced if dropped[k][0] >= self.fail]
        many = f"{len(gone)} layers replaced, not trained" if len(gone) > 1 else "a layer replaced, not trained"
        return self.found(share, f"{many}: {what}", **details)
