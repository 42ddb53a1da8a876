"""Label differential privacy: the client randomizes its labels before it computes its update.

A label-DP mechanism draws a noisy label ``y~`` for each example's label ``y``, from the example's
label alone (and public information), so that for any two labels ``y, y'`` and any output ``o``:
``P(y~ = o | y) <= e^epsilon P(y~ = o | y')`` (epsilon-label-DP, Ghazi et al., "Deep Learning with Label
Differential Privacy", NeurIPS 2021). The client then computes its update on ``(x, y~)``: everything
the update gives away about the labels (iLRG, bias counts, :mod:`leakage.attacks.labels`) is about
``y~``, and any attacker's chance of naming an example's label from it is at most
``e^epsilon / (e^epsilon + K - 1)`` when the label is uniform over the ``K`` classes (what
:func:`randomized_response` reaches).

- :class:`RandomizedResponse`: keep the label with probability ``e^epsilon / (e^epsilon + K - 1)``,
  else draw one of the other ``K - 1`` uniformly.
- :class:`RRWithPrior` (Ghazi et al.'s RRWithPrior): randomized response restricted to the ``k``
  classes of largest public prior probability, ``k`` chosen to maximise the chance of keeping the
  label; a label outside them becomes one of them uniformly. Epsilon-label-DP for any prior that does
  not depend on the example's label.

Why these are defenses that recompute the update, not transforms of it: a defense of
:mod:`leakage.federated.defenses` changes the shared update after the client computed it; label DP
changes what the client computes, its labels, and the update is not a function of the old update
and the new labels (each example's gradient would be needed). So these callbacks redo the client's
step (:func:`leakage.federated.client.client_gradients`, or the FedAvg client's local steps) on the
victims' images with the randomized labels, on the model the client received; they must come first
among the defenses. The secret keeps the true labels: the report scores the attack against them.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor

from leakage.engine.seeding import generator
from leakage.federated.client import client_gradients
from leakage.federated.clientside import ClientSideDefense
from leakage.federated.defenses import Grads, _finite, _integer
from leakage.federated.fedavg import client_updates
from leakage.records import Observation, Secret


def keep_probability(epsilon: float, k: int) -> float:
    """Randomized response's chance of keeping the label among ``k`` classes: ``e^eps / (e^eps + k - 1)``
    (computed as ``1 / (1 + (k - 1) e^-eps)``, which stays finite for any epsilon)."""
    return 1.0 / (1.0 + (k - 1) * math.exp(-epsilon))


def _check(epsilon: object, seed: object) -> None:
    if not (_finite(epsilon) and epsilon > 0):
        raise ValueError(f"label DP epsilon must be a finite number > 0, got {epsilon!r}")
    if not _integer(seed):
        raise ValueError(f"label DP seed must be an integer, got {seed!r}")


def randomized_response(labels: Tensor, num_classes: int, epsilon: float, gen: torch.Generator) -> Tensor:
    """Randomized response over ``num_classes`` classes for every label of ``labels`` (any shape)."""
    flat = labels.flatten().cpu().long()
    keep = torch.rand(flat.shape, generator=gen) < keep_probability(epsilon, num_classes)
    # one of the other K - 1 classes, uniformly: an offset of 1 to K - 1, modulo K
    other = (flat + torch.randint(1, num_classes, flat.shape, generator=gen)) % num_classes
    return torch.where(keep, flat, other).view(labels.shape)


def top_k_classes(prior: Tensor, epsilon: float) -> Tensor:
    """RRWithPrior's classes ``Y_k``: the ``k`` of largest prior probability, ``k`` maximising
    ``keep_probability(epsilon, k) x`` their prior mass (the chance of keeping the label)."""
    order = prior.argsort(descending=True, stable=True)
    mass = prior[order].cumsum(0)
    gains = torch.tensor([keep_probability(epsilon, k) for k in range(1, len(prior) + 1)], dtype=prior.dtype) * mass
    return order[:int(gains.argmax()) + 1]


def rr_with_prior(labels: Tensor, prior: Tensor, epsilon: float, gen: torch.Generator) -> Tensor:
    """Ghazi et al.'s RRWithPrior for every label of ``labels`` with one public ``prior`` ``[K]``:
    randomized response over :func:`top_k_classes`; a label outside them becomes one of them uniformly."""
    classes = top_k_classes(prior, epsilon)
    k = len(classes)
    flat = labels.flatten().cpu().long()
    inside = torch.full((len(prior),), -1, dtype=torch.long)
    inside[classes] = torch.arange(k)
    where = inside[flat]  # position of each label in Y_k, -1 outside
    keep = (where >= 0) & (torch.rand(flat.shape, generator=gen) < keep_probability(epsilon, k))
    if k == 1:
        return classes.expand(flat.shape).clone().view(labels.shape)
    # inside: one of the other k - 1 of Y_k; outside: one of the k uniformly
    offset = torch.where(where >= 0, torch.randint(1, k, flat.shape, generator=gen),
                         torch.randint(0, k, flat.shape, generator=gen))
    drawn = classes[(where.clamp_min(0) + offset) % k]
    return torch.where(keep, flat, drawn).view(labels.shape)


class LabelDefense(ClientSideDefense):
    """A label-DP mechanism as a defense of ``leakage fit`` (see the module docstring): the client's labels
    are randomized, then its update is computed again on them (from Python: ``leakage.client_update(model,
    x, mechanism.privatize(y, num_classes))``). Subclasses define how a label is drawn."""

    name = ""  # a base: RandomizedResponse and RRWithPrior name themselves

    def __init__(self, epsilon: float, seed: int = 0) -> None:
        super().__init__()
        _check(epsilon, seed)
        self.epsilon, self.seed = float(epsilon), seed

    def privatize(self, labels: Tensor, num_classes: int, keys: Optional[Sequence[int]] = None) -> Tensor:
        """The randomized labels ``[V, B]`` of the true ``labels`` ``[V, B]``, update ``v``'s drawn from a
        generator seeded by ``seed`` and its key (``keys``; by default its position)."""
        keys = list(range(labels.shape[0])) if keys is None else list(keys)
        if len(keys) != labels.shape[0]:
            raise ValueError(f"{len(keys)} update keys for {labels.shape[0]} updates")
        return torch.stack([self._draw(labels[v], num_classes, generator(self.name, self.seed, key))
                            for v, key in enumerate(keys)]) if keys else labels.clone()

    def _draw(self, labels: Tensor, num_classes: int, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def bound(self, num_classes: int) -> float:
        """The most any attacker names an example's label with, from the randomized one, for labels
        uniform over ``num_classes`` classes: ``e^epsilon / (e^epsilon + K - 1)``."""
        return keep_probability(self.epsilon, num_classes)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        applied = getattr(trainer.datamodule, "defenses_applied", None)
        if applied and not any(d is self for d in applied):
            raise ValueError(f"{type(self).__name__} randomizes the labels before the client computes its update: "
                             "list it first among the defenses (trainer.callbacks)")
        super().setup(trainer, pl_module, stage)

    def transform(self, observation: Observation, secret: Optional[Secret]) -> tuple[Observation, Optional[Secret]]:
        if observation.labels is not None:
            raise ValueError("label DP hides labels that public_labels true gives the server: drop one of the two")
        model, secret = self.client(observation, secret)
        noisy = self.privatize(secret.labels, observation.num_classes, observation.update_keys)
        device = next(model.parameters()).device
        x, y = secret.images.to(device), noisy.to(device)
        if observation.client is None:
            grads: Grads = client_gradients(model, x, y, observation.client_mode)
        else:
            grads = client_updates(model, x, y, observation.client, observation.update_keys, observation.client_mode)
        return replace(observation, gradients={k: v.cpu() for k, v in grads.items()}), secret

    def describe(self) -> dict:
        return {"defense": self.name, "epsilon": self.epsilon}


class RandomizedResponse(LabelDefense):
    """Label DP by randomized response over the ``K`` classes: each label is kept with probability
    ``e^epsilon / (e^epsilon + K - 1)``, else replaced by one of the other classes uniformly; the client
    computes its update on the result (:mod:`leakage.federated.labeldp`).

    Args:
        epsilon: the label-DP parameter (> 0).
        seed: the seed of the draws (each update's from its own generator, seeded by it and the update's key).
    """

    name = "randomized_response"

    def _draw(self, labels: Tensor, num_classes: int, gen: torch.Generator) -> Tensor:
        return randomized_response(labels, num_classes, self.epsilon, gen)


class RRWithPrior(LabelDefense):
    """Label DP by Ghazi et al.'s RRWithPrior: randomized response over the ``k`` classes of largest
    public prior probability (``k`` maximising the chance of keeping the label); a label outside them
    becomes one of them uniformly (:mod:`leakage.federated.labeldp`).

    Args:
        epsilon: the label-DP parameter (> 0).
        prior: the public prior over the ``K`` classes (non-negative, summing to 1), the same for every
            example: it must not depend on the client's labels (Ghazi et al. take it from a model trained
            in earlier rounds). None: uniform, which is randomized response.
        seed: the seed of the draws (each update's from its own generator).
    """

    name = "rr_with_prior"

    def __init__(self, epsilon: float, prior: Optional[list[float]] = None, seed: int = 0) -> None:
        super().__init__(epsilon, seed)
        if prior is not None:
            if isinstance(prior, (str, bytes)) or not all(_finite(p) and p >= 0 for p in prior) or len(prior) < 2:
                raise ValueError(f"RRWithPrior prior must be a list of at least 2 probabilities >= 0, got {prior!r}")
            if abs(sum(prior) - 1) > 1e-6:
                raise ValueError(f"RRWithPrior prior must sum to 1, got {sum(prior):g}")
        self.prior = None if prior is None else [float(p) for p in prior]

    def _prior(self, num_classes: int) -> Tensor:
        if self.prior is None:
            return torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
        if len(self.prior) != num_classes:
            raise ValueError(f"RRWithPrior prior has {len(self.prior)} probabilities for {num_classes} classes")
        return torch.tensor(self.prior, dtype=torch.float64)

    def _draw(self, labels: Tensor, num_classes: int, gen: torch.Generator) -> Tensor:
        return rr_with_prior(labels, self._prior(num_classes), self.epsilon, gen)

    def classes(self, num_classes: int) -> list[int]:
        """The classes ``Y_k`` the randomized labels fall in (:func:`top_k_classes`)."""
        return top_k_classes(self._prior(num_classes), self.epsilon).tolist()

    def describe(self) -> dict:
        return {**super().describe(), "prior": "uniform" if self.prior is None else "given"}
