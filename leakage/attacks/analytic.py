"""The analytic inversion of a fully connected first layer (Phong et al., 2018; Geiping et al., 2020).

For a first layer ``z = W x + b`` fed the flattened input, the gradient of any loss of one record is
``dL/dW = delta x^T`` and ``dL/db = delta``: every row ``i`` with ``dL/db_i != 0`` holds the input,
``x = dL/dW_i / dL/db_i``. The rows are combined by least squares, ``x = sum_i db_i dW_i / sum_i db_i^2``
over the rows with ``|db_i|`` at least ``min_relative_bias`` times the largest (the weights ``db_i``
make rows with a tiny bias gradient, where the ratio is mostly rounding, count for little).

- **One record (B = 1)**, FedSGD or FedAvg: exact to float32 rounding. Under FedAvg every local step
  sees the same record, so the update's first layer is ``(sum_t delta_t) x^T`` and its bias
  ``sum_t delta_t``: the same ratio. The update certifies it: a victim is reported exact when its
  first-layer update is rank one, ``|dW - db x^T| <= 1e-4 |dW|``, and the record with its label
  reproduces the whole update (:data:`leakage.attacks.closedform.CERTIFIED_RESIDUAL`); rank one alone is no
  proof (a noisy update's ratio is still some input).
- **A batch (B > 1)**: ``dL/dW = sum_n delta_n x_n^T / B``, so the same formula gives a mixture of the
  batch's records, weighted by their bias gradients. The attack runs and puts that mixture in every
  slot of the batch, reported not exact; the metrics then say how close the mixture is to each record.
- **Defenses** (noise, top-k, clipping): the formula still runs and degrades with them; the update is
  then not reproduced (nor, mostly, rank one), so nothing is reported exact.

Labels: iDLG from the last layer for one record, or a batch restoration (:mod:`leakage.attacks.labels`).
The attack reads only the observation (the model, the shared update, public metadata). It
reconstructs the model's input, whatever kind of data that is; decoding and scoring it are the
metrics' part.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from leakage.attacks.closedform import ClosedFormAttack
from leakage.records import Observation
from leakage.attacks.labels import BATCH_STRATEGIES
from leakage.engine.models import first_linear

LABELS = ("idlg", *BATCH_STRATEGIES)
#: a victim is exact when its first-layer update is rank one to this relative tolerance
RANK_ONE_TOLERANCE = 1e-4


class AnalyticInversion(ClosedFormAttack):
    """Invert a fully connected first layer with a bias from its shared gradient, in closed form.

    Exact to float32 rounding for one record per update (see :mod:`leakage.attacks.analytic`); a batch gives
    a mixture of its records, reported not exact.

    Args:
        model: target model whose first parametrised layer is an ``nn.Linear`` with a bias fed the
            flattened input: the built-in ``mlp``, or any ``torch.nn.Module`` given by import path
            (as for :class:`~leakage.attacks.gradient_inversion.GradientInversion`). Other models are refused in one line.
        input_shape: linked from the data by the CLI.
        num_classes: linked from the data by the CLI.
        model_seed: seed of a built-in model's weights.
        model_weights: optional weights file (``.pt``/``.pth``, ``.ckpt``, ``.safetensors``), read
            without unpickling.
        labels: ``idlg`` (the label of one record from the last layer's gradient) or a batch label
            restoration: ``bias_count``, ``weight_count``, ``yin``, ``ilrg`` (see :mod:`leakage.attacks.labels`).
        min_relative_bias: rows whose bias gradient is at least this fraction of the largest one are
            combined (least squares, weighted by the bias gradient); in [0, 1).
    """

    def __init__(
        self,
        model: Union[nn.Module, str] = "mlp",
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        model_seed: int = 1234,
        model_weights: Optional[str] = None,
        labels: Literal["idlg", "bias_count", "weight_count", "yin", "ilrg"] = "idlg",
        min_relative_bias: float = 1e-3,
    ) -> None:
        super().__init__()
        if labels not in LABELS:
            raise ValueError(f"unknown label strategy {labels!r}; choose one of {', '.join(LABELS)}")
        if not 0 <= min_relative_bias < 1:
            raise ValueError(f"min_relative_bias must be in [0, 1), got {min_relative_bias}")
        self._settings_and_target(model, input_shape, num_classes, model_seed, model_weights)
        self.layer_name, _ = first_linear(self.target, input_shape, f"model {self.hparams.model!r}")

    def receive(self, model: nn.Module) -> None:
        super().receive(model)  # a malicious server's model: its own first layer is the one to invert
        self.layer_name, _ = first_linear(self.target, self.hparams.input_shape, "the model the server sent")

    def solve(self, observation: Observation) -> tuple[Tensor, Tensor, Tensor]:
        V, B = observation.num_victims, observation.batch_size
        dW = observation.gradients[f"{self.layer_name}.weight"].to(self.device)  # [V, H, D]
        db = observation.gradients[f"{self.layer_name}.bias"].to(self.device)  # [V, H]
        size = db.abs()
        weight = torch.where(size >= self.hparams.min_relative_bias * size.amax(dim=1, keepdim=True), db, 0.0)
        x = torch.bmm(weight[:, None, :], dW)[:, 0] / (weight * db).sum(dim=1, keepdim=True)  # [V, D]; 0/0: NaN
        residual = torch.linalg.vector_norm(torch.baddbmm(dW, db[..., None], x[:, None, :], alpha=-1), dim=(1, 2))
        exact = (residual <= RANK_ONE_TOLERANCE * torch.linalg.vector_norm(dW, dim=(1, 2))) & (B == 1)
        labels = self.restored_labels(observation)
        x = x.view(V, 1, *observation.input_shape).expand(V, B, *observation.input_shape).contiguous()
        return x, labels, exact

    def describe(self) -> str:
        return "analytic first-layer inversion (closed form)"
