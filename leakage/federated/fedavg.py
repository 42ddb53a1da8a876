"""The FedAvg client: several local SGD steps over mini-batches, and the update it shares.

A FedAvg client (McMahan et al., 2017) starts from the global weights ``w_0``, runs ``local_steps``
plain SGD steps of rate ``local_lr`` on mini-batches of ``local_batch_size`` images drawn from its
``batch_size`` images, and sends back its new weights; the server sees the weight difference
``w_K - w_0`` (share ``delta``), or its rescaling ``(w_0 - w_K) / local_lr`` (share
``pseudo_gradient``), which for one step on the whole batch is the FedSGD gradient.

Two implementations of the same client live here:

- :func:`fedavg_update` is the client itself: a copy of the model trained with ``torch.optim.SGD``
  and ``loss.backward()``, as a real FL client (and the Flower client of
  :mod:`leakage.integrations.flower`) runs it;
- :func:`per_problem_updates` is the attacker's simulation of that client for many dummy batches
  at once: the local steps unrolled with ``torch.func`` (``vmap`` over problems, ``grad`` of the
  functional model per step), differentiable all the way back to the dummy images and labels.

The mini-batch order is public: it comes from :func:`batch_schedule`, seeded by the client's
``shuffle_seed`` and the update's key (:mod:`leakage.engine.seeding`), so client and attacker draw the
same order. The attacker knows ``local_steps``, ``local_lr``, ``local_batch_size``, ``shuffle`` and
the seed (the threat model of the FedAvg attacks of Geiping et al., 2020, and Dimitrov et al., 2022).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from leakage.federated.client import Client, check_batch, client_view
from leakage.federated.trainable import trained_names
from leakage.engine.precision import full_precision
from leakage.engine.seeding import generator

SHARES = ("delta", "pseudo_gradient")


@dataclass(frozen=True)
class FedAvgClient:
    """The public settings of a FedAvg client.

    Args:
        local_steps: SGD steps the client runs before it shares its update.
        local_lr: the client's SGD learning rate (plain SGD: no momentum, no weight decay).
        local_batch_size: images per mini-batch; must divide the client's batch size. None: the
            whole batch in every step.
        shuffle: draw a fresh random order of the batch every local epoch (seeded by
            ``shuffle_seed`` and the update's key); False: the batch's own order.
        shuffle_seed: the public seed of the mini-batch order.
        share: ``delta`` (``w_K - w_0``, what FedAvg sends) or ``pseudo_gradient``
            (``(w_0 - w_K) / local_lr``).
        trainable: the parameters the client trains and shares (name patterns, :mod:`leakage.federated.trainable`);
            None: all.
        freeze: parameters it leaves as received and does not share (name patterns).
    """

    local_steps: int = 1
    local_lr: float = 0.1
    local_batch_size: Optional[int] = None
    shuffle: bool = True
    shuffle_seed: int = 0
    share: Literal["delta", "pseudo_gradient"] = "delta"
    trainable: Optional[tuple[str, ...]] = None
    freeze: tuple[str, ...] = ()

    def trained(self, model: nn.Module) -> list[str]:
        """The names of ``model``'s parameters the client trains (all, unless ``trainable``/``freeze`` say otherwise)."""
        names = [n for n, _ in model.named_parameters()]
        return names if self.trainable is None and not self.freeze else trained_names(names, self.trainable, self.freeze)

    def __post_init__(self) -> None:
        if not isinstance(self.local_steps, int) or isinstance(self.local_steps, bool) or self.local_steps < 1:
            raise ValueError(f"local_steps must be an integer >= 1 (a FedAvg client takes at least one step), got {self.local_steps!r}")
        if not isinstance(self.local_lr, (int, float)) or not math.isfinite(self.local_lr) or self.local_lr <= 0:
            raise ValueError(f"local_lr must be a finite number > 0, got {self.local_lr!r}")
        if self.local_batch_size is not None and (
            not isinstance(self.local_batch_size, int) or isinstance(self.local_batch_size, bool) or self.local_batch_size < 1
        ):
            raise ValueError(f"local_batch_size must be an integer >= 1, got {self.local_batch_size!r}")
        if self.share not in SHARES:
            raise ValueError(f"unknown share {self.share!r}; choose one of {', '.join(SHARES)}")

    def mini_batch(self, batch_size: int) -> int:
        """The mini-batch size for a client batch of ``batch_size`` images (checked to fit)."""
        b = batch_size if self.local_batch_size is None else self.local_batch_size
        if b > batch_size:
            raise ValueError(
                f"local_batch_size {b} is larger than the client's batch of {batch_size} images: "
                f"use local_batch_size {batch_size} or less"
            )
        if batch_size % b:
            raise ValueError(
                f"local_batch_size {b} does not divide the client's batch of {batch_size} images "
                "into equal mini-batches: pick a divisor of batch_size"
            )
        return b

    @property
    def is_fedsgd(self) -> bool:
        """One step on the whole batch, shared as a pseudo-gradient: exactly FedSGD's update."""
        return self.local_steps == 1 and self.local_batch_size is None and self.share == "pseudo_gradient"

    def gradient_estimate(self, update: Tensor) -> Tensor:
        """The shared update in pseudo-gradient units ``(w_0 - w_K) / local_lr`` (the sum of the
        local gradients), whichever the client shares: the units the attack matches in (a ``delta``
        is ``local_lr`` times smaller, its l2 matching loss ``local_lr**2`` times) and what label
        restoration strategies read the last layer's gradient from."""
        return update if self.share == "pseudo_gradient" else update / -self.local_lr


class FedAvg(Client):
    """FedAvg: the client runs local SGD steps on mini-batches of its batch and shares the result
    (the settings are public to the attacker; :class:`FedAvgClient` holds them for one batch size).

    Args:
        local_steps: SGD steps per update.
        local_epochs: passes over the batch instead of ``local_steps``
            (``local_epochs x batch_size / local_batch_size`` steps).
        local_lr: the client's SGD learning rate.
        local_batch_size: images per mini-batch (a divisor of the data's ``batch_size``); None: the
            whole batch.
        shuffle: a fresh seeded order of the batch every local epoch.
        shuffle_seed: the public seed of the mini-batch order (with each update's key).
        share: ``delta`` (``w_K - w_0``) or ``pseudo_gradient`` (``(w_0 - w_K) / local_lr``).
        client_mode: ``train`` or ``eval`` (see :class:`leakage.federated.client.Client`).
        trainable: the parameters it trains and shares, as name patterns; None: all (see
            :class:`leakage.federated.client.Client`).
        freeze: parameters it leaves as received and does not share, as name patterns.
    """

    name = "fedavg"

    def __init__(self, local_steps: int = 1, local_epochs: Optional[int] = None, local_lr: float = 0.1,
                 local_batch_size: Optional[int] = None, shuffle: bool = True, shuffle_seed: int = 0,
                 share: Literal["delta", "pseudo_gradient"] = "delta",
                 client_mode: Literal["train", "eval"] = "train", trainable: Optional[list[str]] = None,
                 freeze: Optional[list[str]] = None) -> None:
        super().__init__(client_mode, trainable, freeze)
        if local_epochs is not None:
            if local_steps != 1:
                raise ValueError("set local_steps or local_epochs, not both")
            if not isinstance(local_epochs, int) or isinstance(local_epochs, bool) or local_epochs < 1:
                raise ValueError(f"local_epochs must be an integer >= 1, got {local_epochs!r}")
        if not isinstance(shuffle, bool):
            raise ValueError(f"shuffle must be true or false, got {shuffle!r}")
        # the settings that do not depend on the batch, checked now (one line each)
        FedAvgClient(local_steps=local_steps, local_lr=local_lr, local_batch_size=local_batch_size,
                     shuffle=shuffle, shuffle_seed=shuffle_seed, share=share)
        self.local_steps, self.local_epochs, self.local_lr = local_steps, local_epochs, local_lr
        self.local_batch_size, self.shuffle, self.shuffle_seed, self.share = local_batch_size, shuffle, shuffle_seed, share

    def for_batch(self, batch_size: int) -> FedAvgClient:
        """The client's settings for a batch of ``batch_size`` images: ``local_epochs`` made steps, and
        a mini-batch that does not fit the batch refused now."""
        steps = (self.local_steps if self.local_epochs is None
                 else epochs_to_steps(self.local_epochs, batch_size, self.local_batch_size))
        client = FedAvgClient(local_steps=steps, local_lr=self.local_lr, local_batch_size=self.local_batch_size,
                              shuffle=self.shuffle, shuffle_seed=self.shuffle_seed, share=self.share,
                              trainable=self.trainable, freeze=self.freeze)
        client.mini_batch(batch_size)
        return client

    def __repr__(self) -> str:
        return (f"FedAvg(local_steps={self.local_steps}, local_epochs={self.local_epochs}, local_lr={self.local_lr}, "
                f"local_batch_size={self.local_batch_size}, share={self.share!r}, client_mode={self.client_mode!r}"
                + ("" if self.trains_all else f", trainable={self.trainable!r}, freeze={list(self.freeze)!r}") + ")")


def epochs_to_steps(local_epochs: int, batch_size: int, local_batch_size: Optional[int]) -> int:
    """Local steps of ``local_epochs`` passes over a batch of ``batch_size`` images."""
    if not isinstance(local_epochs, int) or isinstance(local_epochs, bool) or local_epochs < 1:
        raise ValueError(f"local_epochs must be an integer >= 1, got {local_epochs!r}")
    b = FedAvgClient(local_batch_size=local_batch_size).mini_batch(batch_size)
    return local_epochs * (batch_size // b)


def batch_schedule(client: FedAvgClient, batch_size: int, key: int) -> Tensor:
    """The mini-batches of one update: ``[local_steps, local_batch_size]`` indices into the batch.

    Epoch after epoch, the batch is ordered (a fresh permutation per epoch from the generator seeded
    by ``(shuffle_seed, key)`` when ``shuffle``; else its own order) and cut into mini-batches, as a
    ``DataLoader(shuffle=..., drop_last=True)`` over the client's images would.
    """
    b = client.mini_batch(batch_size)
    per_epoch = batch_size // b
    gen = generator("minibatches", client.shuffle_seed, key)
    steps = []
    while len(steps) < client.local_steps:
        order = torch.randperm(batch_size, generator=gen) if client.shuffle else torch.arange(batch_size)
        steps.extend(order.view(per_epoch, b))
    return torch.stack(steps[: client.local_steps])


def schedules(client: FedAvgClient, batch_size: int, keys: Sequence[int]) -> Tensor:
    """The mini-batch schedules ``[len(keys), local_steps, local_batch_size]`` of several updates."""
    return torch.stack([batch_schedule(client, batch_size, k) for k in keys])


def _shared(client: FedAvgClient, delta: Tensor) -> Tensor:
    return delta if client.share == "delta" else delta / -client.local_lr


# ------------------------------------------------------------------ the client
def train_locally(model: nn.Module, x: Tensor, y: Tensor, client: FedAvgClient, key: int,
                  forward: Optional[nn.Module] = None) -> None:
    """The client's local training, in place: ``local_steps`` steps of ``torch.optim.SGD`` with
    ``loss.backward()`` on the mini-batches of :func:`batch_schedule`. ``x`` is ``[B, C, H, W]``,
    ``y`` ``[B]``. ``forward`` is the module whose forward pass runs with ``model``'s parameters
    (:func:`leakage.federated.client.client_view`); default: ``model`` itself, in its own train/eval mode."""
    net = model if forward is None else forward
    named = dict(model.named_parameters())
    params = [named[n] for n in client.trained(model)]  # a frozen parameter stays as received
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=client.local_lr)
    for idx in batch_schedule(client, x.shape[0], key):
        opt.zero_grad()
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()


def fedavg_update(model: nn.Module, x: Tensor, y: Tensor, client: FedAvgClient, key: int,
                  mode: str = "train") -> dict[str, Tensor]:
    """One client's shared update: local SGD on a copy of ``model``, as a real FL client runs it.

    ``x`` is ``[B, C, H, W]``, ``y`` is ``[B]``; ``mode`` is the client's ``train`` (BatchNorm with
    each mini-batch's statistics) or ``eval`` (:func:`leakage.federated.client.client_view`). Returns
    ``{parameter name: tensor}`` (the weight difference, or the pseudo-gradient), detached;
    ``model`` is left as it was.
    """
    local = copy.deepcopy(model)
    start = {n: p.detach().clone() for n, p in local.named_parameters()}
    train_locally(local, x, y, client, key, forward=client_view(local, mode))
    params = dict(local.named_parameters())
    return {n: _shared(client, params[n].detach() - start[n]) for n in client.trained(local)}


def client_updates(model: nn.Module, x: Tensor, y: Tensor, client: FedAvgClient, keys: Sequence[int],
                   mode: str = "train") -> dict[str, Tensor]:
    """Each victim's shared FedAvg update: ``x`` ``[V, B, C, H, W]``, ``y`` ``[V, B]``; returns
    ``{name: [V, *shape]}``. The batch is checked first (:func:`leakage.federated.client.check_batch`)."""
    check_batch(model, x, y)
    with full_precision():  # as the attack: no TF32 or bf16 shortcut in the client's float32 math
        updates = [fedavg_update(model, xv, yv, client, k, mode) for xv, yv, k in zip(x, y.long(), keys)]
    return {n: torch.stack([u[n] for u in updates]) for n in updates[0]}


# ------------------------------------------------------------- the simulation
def per_problem_updates(model: nn.Module, x: Tensor, targets: Tensor, client: FedAvgClient, schedule: Tensor,
                        forward: Optional[nn.Module] = None) -> dict[str, Tensor]:
    """The FedAvg update of the model for many dummy batches at once, differentiable.

    ``x`` is ``[P, B, C, H, W]``; ``targets`` ``[P, B]`` class indices or ``[P, B, K]`` class
    probabilities; ``schedule`` ``[P, local_steps, local_batch_size]`` (:func:`schedules`). Each
    problem's local steps are unrolled: ``w_{k+1} = w_k - lr * grad_w CE(f(w_k, x[idx_k]), t[idx_k])``
    with ``torch.func.grad``, whose result stays differentiable in ``w_k`` and in the dummies, so
    the outer backward of a loss on the returned update reaches ``x`` and ``targets`` through every
    step (second order, composed by ``torch.func``). Memory grows linearly with ``local_steps``.
    ``forward`` runs the forward pass with ``model``'s parameters (the client's train or eval mode,
    :func:`leakage.federated.client.client_view`); default: ``model``. Returns ``{parameter name: [P, *shape]}``
    in pseudo-gradient units ``(w_0 - w_K) / local_lr`` whichever the client shares: what
    :meth:`FedAvgClient.gradient_estimate` makes of the shared update, so that the attack matches
    ``delta`` and ``pseudo_gradient`` updates alike.
    """
    net = model if forward is None else forward
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}
    lr = client.local_lr
    trained = client.trained(model)  # the others stay as received (a client that freezes some)
    frozen = {n: v for n, v in params.items() if n not in set(trained)}

    def loss(p: dict[str, Tensor], xb: Tensor, tb: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(net, ({**p, **frozen}, buffers), (xb,)), tb)

    step_grad = grad(loss)

    def one(xp: Tensor, tp: Tensor, sched: Tensor) -> dict[str, Tensor]:
        delta = {n: torch.zeros_like(params[n]) for n in trained}
        for k in range(sched.shape[0]):
            idx = sched[k]
            w = {n: params[n] + delta[n] for n in trained}
            g = step_grad(w, xp[idx], tp[idx])
            delta = {n: delta[n] - lr * g[n] for n in trained}
        return {n: d / -lr for n, d in delta.items()}

    return vmap(one, randomness="different")(x, targets, schedule)  # a model's own noise (PRECODE): one draw per update
