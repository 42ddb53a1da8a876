"""The base of the defenses that need what only the client has: the model it received and its own batch.

A defense of :mod:`leakage.federated.defenses` transforms the shared update alone. Some client-side
defenses read more: label DP randomizes the labels and computes the update again
(:mod:`leakage.federated.labeldp`); Soteria scores the representation's features on the client's own
inputs before it prunes the update (:mod:`leakage.federated.soteria`). As callbacks of ``leakage fit``
they take the client's model in ``setup`` (the model the server sent: a malicious server's, else the
attack's target, which the client trained) and the victims' batch from the data module's secret (the
client's data: the defense runs on the client, the attacker never sees it).
"""

from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl
from torch import nn

from leakage.federated.defenses import Defense
from leakage.records import Observation, Secret


class ClientSideDefense(Defense):
    """A defense that runs with the client's model and batch (module docstring): ``leakage fit`` gives it
    the model in ``setup``; a sweep runs each of its cells as its own fit (``needs_client_model``)."""

    #: a base, not a defense of its own (the configuration reference lists the defenses)
    name = ""
    #: a sweep cannot solve its cells as one batched fit: each needs its own fit's client
    needs_client_model = True

    def __init__(self) -> None:
        self._model: Optional[nn.Module] = None  # the model the client computed its update with, from setup

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        server = getattr(dm, "server", None)
        self._model = server.model if server is not None and server.malicious else pl_module.target
        super().setup(trainer, pl_module, stage)

    def client(self, observation: Observation, secret: Optional[Secret]) -> tuple[nn.Module, Secret]:
        """The client's model and batch, or a one-line error saying why this defense cannot run."""
        what = type(self).__name__
        if secret is None:
            raise ValueError(f"{what} runs on the client with its data: it needs the victims' data, not captured "
                             "gradients")
        if self._model is None:
            raise ValueError(f"{what} runs with the client's model: use it as a callback of leakage fit (in a sweep "
                             "its cells run as their own fits)")
        return self._model, secret
