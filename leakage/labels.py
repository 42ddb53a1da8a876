"""Analytic label recovery from a shared gradient."""

from __future__ import annotations

import torch
from torch import Tensor


def idlg_labels(last_weight_grad: Tensor, last_bias_grad: Tensor | None = None) -> Tensor:
    """iDLG (Zhao et al., 2020): the label of a single-image update from the last linear layer.

    With cross-entropy, the last layer's bias gradient is ``softmax(z) - onehot(y)``: its only
    negative entry is the true class. Without a bias, the weight gradient row of the true class is
    ``(p_y - 1) * h`` and the others ``p_j * h``; for non-negative features ``h`` (sigmoid, ReLU)
    the true class has the smallest row sum.

    Takes gradients with a leading victim dimension (``[V, K, F]`` and ``[V, K]``) and returns
    ``[V]`` labels.
    """
    if last_bias_grad is not None:
        return last_bias_grad.argmin(dim=-1)
    return last_weight_grad.sum(dim=-1).argmin(dim=-1)
