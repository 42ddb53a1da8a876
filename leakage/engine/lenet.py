"""The body of DLG's LeNet (Zhu et al., 2019), shared by :class:`leakage.engine.models.LeNet` and
:class:`leakage.engine.precode.LeNetPrecode`: one definition, built in one module order, so a seeded
model draws the same weights in both."""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn


def lenet_body(channels: int) -> nn.Sequential:
    """DLG's LeNet body: three 5x5 convolutions with 12 channels (strides 2, 2, 1, padding 2), each
    followed by a sigmoid; ``[B, channels, H, W]`` to ``[B, 12, ceil(H / 4), ceil(W / 4)]``."""
    return nn.Sequential(
        nn.Conv2d(channels, 12, kernel_size=5, padding=2, stride=2),
        nn.Sigmoid(),
        nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=2),
        nn.Sigmoid(),
        nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1),
        nn.Sigmoid(),
    )


def lenet_features(input_shape: Sequence[int]) -> int:
    """How many features :func:`lenet_body` gives for one input of ``input_shape`` ``[C, H, W]``, flattened."""
    _, h, w = input_shape
    return 12 * math.ceil(h / 4) * math.ceil(w / 4)
