"""The imprint attack of a malicious server (the shared part: :mod:`leakage.attacks.malicious`).

:class:`ImprintAttack` (Fowl et al., "Robbing the Fed", ICLR 2022): the imprint module's rows are
  cumulative, row ``i`` summing the inputs whose feature exceeds cut ``i`` with the same weight per
  input in every row, so the difference of neighbouring rows holds the inputs of one bin:
  ``x = (dW_i - dW_{i+1}) / (db_i - db_{i+1})``, exactly one input where the bin holds one. The
  bins that hold any input (a bias difference above rounding) fill the batch's slots, the largest
  first. ``B`` bins holding an input is the read-out's condition for exact (FedSGD; under FedAvg an
  input's bin can drift between local steps), not its proof: noise or masks fill every bin. A
  victim is certified exact only when, besides, the recovered batch reproduces the whole update
  (:mod:`leakage.attacks.closedform`).
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from leakage.attacks.malicious import MIN_RELATIVE_BIAS, _MaliciousAttack
from leakage.federated.server import ImprintServer
from leakage.records import Observation


class ImprintAttack(_MaliciousAttack):
    """Read every input alone in its bin off a malicious server's imprint module (module docstring).

    Args:
        model: the global model (the server inserts the imprint module in front of it): a built-in
            name or any ``torch.nn.Module`` by import path, as for the other attacks.
        input_shape, num_classes: linked from the data by the CLI.
        model_seed, model_weights: the global model's weights.
        labels: the batch label restoration: ``bias_count``, ``weight_count``, ``yin`` or ``ilrg``.
    """

    server_kind, server_name = ImprintServer, "imprint"
    candidates = "bins holding an input"

    def __init__(self, model: Union[nn.Module, str] = "lenet", input_shape: Sequence[int] = (1, 28, 28),
                 num_classes: int = 10, model_seed: int = 1234, model_weights: Optional[str] = None,
                 labels: Literal["bias_count", "weight_count", "yin", "ilrg"] = "bias_count") -> None:
        super().__init__(model, input_shape, num_classes, model_seed, model_weights, labels)

    def solve(self, observation: Observation) -> tuple[Tensor, Tensor, Tensor]:
        server = self._server(observation)
        grads = observation.gradient_estimate()
        dW = grads[f"{server.layer}.weight"].to(self.device)  # [V, K, D], cumulative over the bins
        db = grads[f"{server.layer}.bias"].to(self.device)  # [V, K]
        dW_bin = dW - torch.cat([dW[:, 1:], torch.zeros_like(dW[:, :1])], dim=1)
        db_bin = db - torch.cat([db[:, 1:], torch.zeros_like(db[:, :1])], dim=1)
        size = db_bin.abs()
        holds = size > MIN_RELATIVE_BIAS * size.amax(dim=1, keepdim=True)
        rows, counts = [], []
        for v in range(observation.num_victims):
            bins = holds[v].nonzero().flatten()
            bins = bins[size[v, bins].argsort(descending=True)]  # the largest first
            rows.append(dW_bin[v, bins] / db_bin[v, bins, None])
            counts.append(len(bins))
        B = observation.batch_size
        exact = torch.tensor([c == B for c in counts], dtype=torch.bool) & (observation.client is None)
        return self._fill(observation, rows), self.restored_labels(observation), exact

    def describe(self) -> str:
        return "imprint-module read-out (Robbing the Fed, closed form)"
