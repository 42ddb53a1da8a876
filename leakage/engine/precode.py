"""PRECODE (Scheliga, Maeder and Seeland, "PRECODE - A Generic Model Extension to Prevent Deep Gradient
Leakage", WACV 2022): a variational bottleneck before the classifier head.

The bottleneck maps the representation ``r`` ``[F]`` through a linear encoder to a mean ``mu`` and a log
variance ``log s^2`` ``[k]`` each, samples ``z = mu + s * eps`` with the client's own noise ``eps ~ N(0, I)``,
and decodes ``z`` linearly back to ``[F]`` for the head. The update then depends on ``eps``, which the
client draws afresh for every update and never shares: an attacker that simulates the client (the
honest optimisation attack) matches gradients computed with noise of its own, and fails.

Where the noise comes from: ``torch.randn_like`` on the client's random stream (torch's global generator,
which a run seeds), in training and eval mode alike (PRECODE's sampling is the defense, not a training
trick). Under ``torch.func.vmap`` (many updates at once, :func:`leakage.federated.client.per_problem_gradients`)
every update draws its own noise (``randomness="different"``). The attacks never read it.

What PRECODE leaves open (Balunovic et al., "Bayesian Framework for Gradient Leakage", ICLR 2022): the
encoder is a fully connected layer fed the representation, so for one image its weight and bias
gradients give the representation exactly (``dW_i / db_i``, row by row), noise or not;
:class:`leakage.attacks.bottleneck.BottleneckInversion` reads it there and inverts the layers below.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from leakage.engine.lenet import lenet_body, lenet_features


class VariationalBottleneck(nn.Module):
    """PRECODE's variational bottleneck: ``encoder`` (``nn.Linear(features, 2 * size)``) to ``mu`` and
    ``log s^2``, ``z = mu + s * eps`` with fresh noise ``eps ~ N(0, I)`` on every forward pass, then
    ``decoder`` (``nn.Linear(size, features)``). Its input and output are ``[B, features]``."""

    def __init__(self, features: int, size: int = 256) -> None:
        super().__init__()
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"the bottleneck size must be a positive integer, got {size!r}")
        self.size = size
        self.encoder = nn.Linear(features, 2 * size)
        self.decoder = nn.Linear(size, features)

    def forward(self, r: Tensor) -> Tensor:
        mu, log_var = self.encoder(r).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        return self.decoder(z)


class LeNetPrecode(nn.Module):
    """DLG's LeNet (:class:`leakage.engine.models.LeNet`: three 5x5 sigmoid convolutions, ``body``) with
    PRECODE's :class:`VariationalBottleneck` (``bottleneck``, 256 wide) between its representation and its
    linear classifier ``fc``: the built-in ``lenet_precode``."""

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, size: int = 256) -> None:
        super().__init__()
        self.body = lenet_body(input_shape[0]).append(nn.Flatten())
        features = lenet_features(input_shape)
        self.bottleneck = VariationalBottleneck(features, size)
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.bottleneck(self.body(x)))


class MLPPrecode(nn.Module):
    """The built-in ``mlp`` (flatten, ``Linear(D, 256)``, ReLU) with PRECODE's :class:`VariationalBottleneck`
    (``bottleneck``, 256 wide) on the flattened input, before it: ``mlp_precode``. Its encoder is the
    first layer, fed the input itself."""

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, hidden: int = 256,
                 size: int = 256) -> None:
        super().__init__()
        n = math.prod(input_shape)
        self.flatten = nn.Flatten()
        self.bottleneck = VariationalBottleneck(n, size)
        self.net = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.bottleneck(self.flatten(x)))
