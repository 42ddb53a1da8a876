"""The plain data the rooms pass between them, each readable without importing its producer:

- :class:`Observation`: what the attacker sees (the shared gradients and public metadata), made by a
  data source (:mod:`leakage.data.datamodule`) and read by attacks, defenses and reports;
- :class:`Secret`: the victims' images and labels, read only by metrics and galleries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
from torch import Tensor

from leakage.data.kinds.base import DataKind
from leakage.data.kinds.image import ImageKind
from leakage.engine.seeding import position_key
from leakage.federated.client import CLIENT_MODES
from leakage.federated.fedavg import FedAvgClient
from leakage.federated.server import HONEST, PUBLIC_LABELS, Server

@dataclass
class Observation:
    """Everything the attacker may use besides the model: shared gradients and public metadata."""

    gradients: dict[str, Tensor]  # {parameter name: [V, *shape]}
    batch_size: int
    input_shape: tuple[int, ...]  # one sample's shape: [C, H, W] images, [D] encoded table rows
    num_classes: int
    data_range: tuple[float, float] = (0.0, 1.0)
    #: one public key per update, as a server names what it receives (round, client): every random
    #: draw of the attack on that update is seeded by it (:mod:`leakage.engine.seeding`). Image sources key
    #: an update by its images' dataset indices, captured files by its position; None: by position.
    update_keys: Optional[tuple[int, ...]] = None
    #: how the client ran the model for its update (public protocol setting): ``train`` (BatchNorm
    #: with the batch's own statistics, what FL clients do) or ``eval``; the attack simulates the same
    client_mode: str = "train"
    #: the client protocol that made the updates: None is FedSGD (one gradient, mean over the
    #: batch); a :class:`~leakage.federated.fedavg.FedAvgClient` holds the public FedAvg settings
    client: Optional[FedAvgClient] = None
    #: the kind of data (:mod:`leakage.data.kinds`): how a dummy is parametrised, decoded and scored;
    #: None: images of ``input_shape`` in ``data_range``
    kind: Optional[DataKind] = None
    #: the victims' labels ``[V, B]`` when they are public (TabLeak's threat model: labels known)
    labels: Optional[Tensor] = None
    #: the server (:mod:`leakage.federated.server`): None or an honest one is honest-but-curious; a malicious one
    #: records what it changed and the model it sent, which the clients trained and the attack targets
    server: Optional[Server] = None

    @property
    def threat_model(self) -> str:
        """Who attacks, in a few words: the first line of every report (with the labels when they are
        public: TabLeak's setting, where the server knows them)."""
        who = HONEST if self.server is None else self.server.describe()
        return who + (PUBLIC_LABELS if self.labels is not None else "")

    def __post_init__(self) -> None:
        if self.kind is None:
            self.kind = ImageKind(self.input_shape, self.data_range)
        if self.client_mode not in CLIENT_MODES:
            raise ValueError(f"unknown client mode {self.client_mode!r}; choose one of {', '.join(CLIENT_MODES)}")
        if self.update_keys is None:
            self.update_keys = tuple(position_key(i) for i in range(self.num_victims))
        self.update_keys = tuple(int(k) for k in self.update_keys)
        if len(self.update_keys) != self.num_victims:
            raise ValueError(f"{len(self.update_keys)} update keys for {self.num_victims} updates")
        carries = torch.zeros(self.num_victims, dtype=torch.bool)
        for g in self.gradients.values():
            carries |= g.reshape(self.num_victims, g[0].numel() if self.num_victims else 0).ne(0).any(1).cpu()
        zero = (~carries).nonzero().flatten().tolist()
        if zero:  # refused whole, before any attack: a zero update is an input mistake, not an outcome
            which = "the shared update is" if self.num_victims == 1 else (
                f"update{'s' if len(zero) > 1 else ''} {', '.join(map(str, zero[:5]))}{', ...' if len(zero) > 5 else ''}"
                f" (of {self.num_victims}, by position) {'are' if len(zero) > 1 else 'is'}")
            raise ValueError(f"{which} all zero: a zero update carries nothing to invert"
                             + ("" if self.num_victims == 1 else "; leave those victims out"))

    def gradient_estimate(self) -> dict[str, Tensor]:
        """The shared updates as gradients: as shared for FedSGD; for FedAvg the pseudo-gradient
        ``(w_0 - w_K) / local_lr``, the sum of the local gradients (label restoration reads it
        divided by ``local_steps``: :func:`leakage.attacks.labels.label_gradients`)."""
        if self.client is None:
            return self.gradients
        return {k: self.client.gradient_estimate(v) for k, v in self.gradients.items()}

    @property
    def num_victims(self) -> int:
        return next(iter(self.gradients.values())).shape[0]

    def select(self, victims: Sequence[int]) -> "Observation":
        """The observation of these updates only (one process's shard), in the given order."""
        victims = list(victims)
        if victims == list(range(self.num_victims)):
            return self
        index = torch.tensor(victims, dtype=torch.long)
        return replace(self, gradients={k: v[index] for k, v in self.gradients.items()},
                       update_keys=tuple(self.update_keys[i] for i in victims),
                       labels=None if self.labels is None else self.labels[index])

    @property
    def entries_per_unknown(self) -> float:
        """Gradient entries of one update per unknown input value (``B x C x H x W``).

        Below 1 the matching problem is underdetermined; above 1 it may still be, since entries are
        not independent equations: :mod:`leakage.attacks.identifiability` measures the Jacobian rank."""
        entries = sum(math.prod(g.shape[1:]) for g in self.gradients.values())
        unknowns = self.batch_size * math.prod(self.input_shape)
        return entries / unknowns


@dataclass
class Secret:
    """The victims' private batches. Attack code never reads this."""

    images: Tensor  # the model inputs [V, B, *sample_shape]: images in [0, 1], or encoded table rows
    labels: Tensor  # [V, B]
    indices: list[list[int]]  # dataset index of every image, per victim
