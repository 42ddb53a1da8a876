"""Soteria (Sun et al., "Soteria: Provable Defense against Privacy Leakage in Federated Learning from
Representation Perspective", CVPR 2021): the client prunes the gradient of the layer fed the data's
representation.

For the fully connected layer ``layer`` with input ``r`` (the representation, ``F`` features), the client
scores each feature on its own batch by ``sum_i ||d r_{i,f} / d x_i|| / |r_{i,f}|`` (the input change
a unit change of the feature needs, inverted: Sun et al.'s criterion) and zeroes the columns of the
layer's weight gradient of the ``prune_ratio`` share of features that score lowest. The other layers'
gradients are left as they are: an attacker who leaves the defended layer out of its matching loss (the
adaptive attacker of Balunovic et al., "Bayesian Framework for Gradient Leakage", ICLR 2022:
``--model.objective.exclude [fc]``) inverts the rest of the update, which Soteria does not touch.

Each example's Jacobian is its own: the model runs in eval mode for the scores (BatchNorm with its
running statistics), the update is pruned as the client computed it. FedSGD updates only.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import Tensor, nn

from leakage.federated.client import client_view
from leakage.federated.clientside import ClientSideDefense
from leakage.federated.defenses import _finite
from leakage.records import Observation, Secret


def representation_scores(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    """Soteria's score of each input feature of ``layer`` (an ``nn.Linear`` of ``model``) on the batch ``x``
    ``[B, *sample_shape]``: ``sum_i ||d r_{i,f} / d x_i|| / |r_{i,f}|`` ``[F]`` (a feature that is 0 on
    every example scores infinity: its gradient columns are zero already)."""
    net = client_view(model, "eval")
    seen: list[Tensor] = []
    hook = net.get_submodule(layer).register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
    x = x.detach().clone().requires_grad_()
    try:
        with torch.enable_grad():
            net(x)
            r = seen[-1].flatten(1)  # [B, F]
            B, F = r.shape
            eye = torch.eye(F, dtype=r.dtype, device=r.device)[:, None, :].expand(F, B, F)
            try:  # all features' Jacobians in one batched backward
                jac = torch.autograd.grad(r, x, eye, is_grads_batched=True)[0]  # [F, B, *shape]
            except RuntimeError:  # an op without a batching rule: one feature at a time
                jac = torch.stack([torch.autograd.grad(r, x, eye[f], retain_graph=True)[0] for f in range(F)])
    finally:
        hook.remove()
    norms = jac.flatten(2).norm(dim=2)  # [F, B]
    return (norms / r.detach().abs().t().clamp_min(1e-12)).sum(dim=1)


def prune_mask(scores: Tensor, prune_ratio: float) -> Tensor:
    """1 for the features kept, 0 for the ``prune_ratio`` share (rounded down) that score lowest ``[F]``."""
    mask = torch.ones_like(scores)
    pruned = int(prune_ratio * scores.numel())
    if pruned:
        mask[scores.argsort(stable=True)[:pruned]] = 0
    return mask


class Soteria(ClientSideDefense):
    """Soteria (module docstring): the client zeroes the weight gradient's columns of the ``prune_ratio``
    share of the representation's features that score lowest on its own batch.

    Args:
        prune_ratio: the share of the defended layer's input features whose gradient is pruned, in [0, 1).
        layer: the defended ``nn.Linear`` by its name in the model (``fc``); None: the model's last
            ``nn.Linear`` (the classifier, whose input is the representation in Sun et al.'s models).
    """

    name = "soteria"

    def __init__(self, prune_ratio: float = 0.8, layer: Optional[str] = None) -> None:
        super().__init__()
        if not (_finite(prune_ratio) and 0 <= prune_ratio < 1):
            raise ValueError(f"Soteria prune_ratio must be in [0, 1) (the share of features pruned), got {prune_ratio!r}")
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise ValueError(f"Soteria layer must be a layer's name (fc) or null, got {layer!r}")
        self.prune_ratio, self.layer = float(prune_ratio), layer

    def defended(self, model: nn.Module) -> str:
        """The defended layer's name: :attr:`layer`, which must be an ``nn.Linear`` of ``model``, or its last."""
        layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        if self.layer is None:
            if not layers:
                raise ValueError("Soteria defends a fully connected layer: the model has no nn.Linear")
            return list(layers)[-1]
        if self.layer not in layers:
            raise ValueError(f"Soteria layer {self.layer!r} is not an nn.Linear of the model; its linear layers: "
                             f"{', '.join(layers) or 'none'}")
        return self.layer

    def transform(self, observation: Observation, secret: Optional[Secret]) -> tuple[Observation, Optional[Secret]]:
        if observation.client is not None:
            raise ValueError("Soteria prunes a FedSGD gradient: use --data.client FedSGD")
        model, secret = self.client(observation, secret)
        return replace(observation, gradients=self.defend(model, secret.images, observation.gradients)), secret

    def defend(self, model: nn.Module, images: Tensor, gradients: dict[str, Tensor]) -> dict[str, Tensor]:
        """The updates ``{name: [V, *shape]}`` of the batches ``images`` ``[V, B, *sample_shape]`` on ``model``,
        pruned (what the client shares; from Python: ``Soteria().defend(model, x[None], update)``, with the
        update's leading dimension)."""
        name = self.defended(model)
        key = f"{name}.weight"
        device = next(model.parameters()).device
        masks = torch.stack([prune_mask(representation_scores(model, name, x.to(device)), self.prune_ratio).cpu()
                             for x in images])  # [V, F]
        out = dict(gradients)
        out[key] = out[key] * masks[:, None, :].to(out[key])
        return out

    def describe(self) -> dict:
        return {"defense": self.name, "prune_ratio": self.prune_ratio, "layer": self.layer or "last linear"}
