"""The trap-weights attack of a malicious server (the shared part: :mod:`leakage.attacks.malicious`).

:class:`TrapWeightAttack` (Boenisch et al., "When the Curious Abandon Honesty", EuroS&P 2023):
  every first-layer row with a bias gradient gives a candidate ``dW_i / db_i``, one input where the
  row fired for that input only, a mixture otherwise. Rows that fired for the same single input give
  the same candidate to float32 rounding: candidates in the data range are grouped when they agree to
  :data:`DUPLICATE_TOLERANCE` (tight: on an untrained model two inputs of one label have nearly the
  same output, and rows that fire for both repeat one mixture to about 4e-4), and the largest groups fill the batch's
  slots (then single candidates). The read-out's condition for exact is ``B`` groups of two or more
  rows whose inputs are distinct (no two within :data:`DISTINCT_TOLERANCE`); the certificate also
  needs the recovered batch to reproduce the whole update (:mod:`leakage.attacks.closedform`).
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from leakage.attacks.malicious import MIN_RELATIVE_BIAS, _MaliciousAttack
from leakage.federated.server import TrapWeightServer
from leakage.records import Observation

#: two trap-weight candidates are one input when they differ by at most this, relative to their size
DUPLICATE_TOLERANCE = 1e-5
#: a victim's trap-weight result is exact only when its groups' inputs differ by more than this
DISTINCT_TOLERANCE = 1e-2


class TrapWeightAttack(_MaliciousAttack):
    """Read the inputs off a malicious server's trap weights (module docstring).

    Args:
        model: the global model, whose fully connected first layer holds the trap weights (the built-in
            ``mlp``, or any ``torch.nn.Module`` by import path).
        input_shape, num_classes: linked from the data by the CLI.
        model_seed, model_weights: the global model's weights (the server replaces the first layer's).
        labels: the batch label restoration: ``bias_count``, ``weight_count``, ``yin`` or ``ilrg``.
    """

    server_kind, server_name = TrapWeightServer, "trap_weights"
    candidates = "candidate rows"

    def __init__(self, model: Union[nn.Module, str] = "mlp", input_shape: Sequence[int] = (1, 28, 28),
                 num_classes: int = 10, model_seed: int = 1234, model_weights: Optional[str] = None,
                 labels: Literal["bias_count", "weight_count", "yin", "ilrg"] = "bias_count") -> None:
        super().__init__(model, input_shape, num_classes, model_seed, model_weights, labels)

    def solve(self, observation: Observation) -> tuple[Tensor, Tensor, Tensor]:
        server = self._server(observation)
        grads = observation.gradient_estimate()
        dW = grads[f"{server.layer}.weight"].to(self.device)  # [V, H, D]
        db = grads[f"{server.layer}.bias"].to(self.device)  # [V, H]
        lo, hi = observation.data_range
        slack = 1e-3 * (hi - lo)
        rows, certified = [], []
        for v in range(observation.num_victims):
            size = db[v].abs()
            fired = (size > MIN_RELATIVE_BIAS * size.max()).nonzero().flatten()
            cand = dW[v, fired] / db[v, fired, None]  # [n, D]
            cand = cand[((cand >= lo - slack) & (cand <= hi + slack)).all(dim=1)]
            groups = self._groups(cand)
            found = torch.stack([cand[g].mean(dim=0) for g in groups]) if groups else cand[:0]
            rows.append(found)
            top = found[:observation.batch_size]
            gaps = torch.cdist(top, top, compute_mode="donot_use_mm_for_euclid_dist")
            gaps.fill_diagonal_(float("inf"))
            distinct = bool((gaps > DISTINCT_TOLERANCE * top.norm(dim=1).clamp_min(1e-12)[:, None]).all())
            certified.append(sum(len(g) >= 2 for g in groups[:observation.batch_size]) if distinct else 0)
        B = observation.batch_size
        exact = torch.tensor([c == B for c in certified], dtype=torch.bool) & (observation.client is None)
        return self._fill(observation, rows), self.restored_labels(observation), exact

    @staticmethod
    def _groups(cand: Tensor) -> list[Tensor]:
        """Candidates that agree to :data:`DUPLICATE_TOLERANCE`, grouped: the largest group first."""
        if cand.shape[0] == 0:
            return []
        scale = cand.norm(dim=1).clamp_min(1e-12)
        distance = torch.cdist(cand, cand, compute_mode="donot_use_mm_for_euclid_dist")  # exact, not |a|^2 - 2ab + |b|^2
        same = distance <= DUPLICATE_TOLERANCE * torch.minimum(scale[:, None], scale[None, :])
        same.fill_diagonal_(True)  # every candidate is in its own group: the loop below ends
        left = torch.ones(cand.shape[0], dtype=torch.bool, device=cand.device)
        groups = []
        while left.any():
            counts = (same & left[None, :] & left[:, None]).sum(dim=1)
            first = int(counts.argmax())
            members = (same[first] & left).nonzero().flatten()
            groups.append(members)
            left[members] = False
        return groups

    def describe(self) -> str:
        return "trap-weight read-out (When the Curious Abandon Honesty, closed form)"
