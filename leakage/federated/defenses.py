"""Client-side defenses: transformations of the shared gradient before the attacker observes it.

A functional core works on ``{parameter name: [V, *shape]}`` gradients (one row per client
update); each defense is also a Lightning callback that applies it to the data module's observation
in ``setup``, which Lightning runs after the data module's and before the attack's. Several defenses
compose in the order the config lists them:

.. code-block:: yaml

    trainer:
      callbacks:
        - class_path: leakage.federated.defenses.NormClip
          init_args: {max_norm: 1.0}
        - class_path: leakage.federated.defenses.GaussianNoise
          init_args: {sigma: 0.01}
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal, Optional, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor

from leakage.records import Observation, Secret
from leakage.engine.seeding import generator, group_key

Grads = dict[str, Tensor]


# ----------------------------------------------------------------------------- setting checks
def _finite(value: object) -> bool:
    """A finite real number (not a bool, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- functional core
def _rows(g: Tensor) -> Tensor:
    """``[V, ...]`` as ``[V, n]``, one row per update (``[V, 1]`` for a scalar parameter)."""
    return g.reshape(g.shape[0], -1)


def _update_norms(grads: Grads) -> Tensor:
    """L2 norm of every update over all its parameters: ``[V]``."""
    return torch.sqrt(sum((_rows(g.double()) ** 2).sum(1) for g in grads.values())).float()


def gaussian_noise(grads: Grads, sigma: float, relative: bool = False, seed: int = 0,
                   keys: Optional[Sequence[int]] = None) -> Grads:
    """Add N(0, std^2) noise to every entry.

    ``relative=False``: ``std = sigma``. ``relative=True``: ``std = sigma * rms(layer)`` for each
    layer of each update, ``rms = ||g_layer|| / sqrt(numel)``, so ``sigma`` is a noise-to-signal ratio.

    Each update's noise comes from a generator seeded by ``seed`` and the update's key (its
    :attr:`Observation.update_keys` entry; by default its position), so an update receives the same
    noise whatever other updates are transformed with it.
    """
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"noise sigma must be a finite number >= 0, got {sigma}")
    V = next(iter(grads.values())).shape[0]
    keys = list(range(V)) if keys is None else list(keys)
    if len(keys) != V:
        raise ValueError(f"{len(keys)} update keys for {V} updates")
    noise = {name: torch.empty(g.shape, dtype=g.dtype) for name, g in grads.items()}
    for v, key in enumerate(keys):
        gen = generator("gaussian_noise", seed, key)
        for name, g in grads.items():
            noise[name][v] = torch.randn(g.shape[1:], generator=gen, dtype=g.dtype)
    out = {}
    for name, g in grads.items():
        n = noise[name].to(g.device)
        if relative:
            rms = _rows(g).norm(dim=1) / math.sqrt(g[0].numel())
            n = n * rms.view(-1, *[1] * (g.dim() - 1))
        out[name] = g + sigma * n
    return out


def clip_updates(grads: Grads, max_norm: float) -> Grads:
    """Scale each update to an L2 norm of at most ``max_norm`` (over all its parameters)."""
    if not (_finite(max_norm) and max_norm > 0):
        raise ValueError(f"clipping max_norm must be a finite number > 0, got {max_norm}")
    scale = (max_norm / _update_norms(grads).clamp_min(1e-12)).clamp(max=1.0)
    return {k: g * scale.view(-1, *[1] * (g.dim() - 1)).to(g.dtype) for k, g in grads.items()}


def top_k(grads: Grads, keep_ratio: float, scope: Literal["global", "layer"] = "global") -> Grads:
    """Keep the ``ceil(keep_ratio * n)`` entries of largest magnitude of each update, zero the rest.

    ``scope="global"``: ``n`` counts every entry of the update; ``"layer"``: each layer on its own.
    Exactly that many entries are kept (ties broken by position).
    """
    if not (_finite(keep_ratio) and 0 < keep_ratio <= 1):
        raise ValueError(f"top-k keep_ratio must be in (0, 1], got {keep_ratio}")
    if scope not in ("global", "layer"):
        raise ValueError(f"top-k scope must be 'global' or 'layer', got {scope!r}")

    def keep(flat: Tensor) -> Tensor:  # flat: [V, n]
        k = math.ceil(keep_ratio * flat.shape[1])
        idx = flat.abs().topk(k, dim=1).indices
        return torch.zeros_like(flat).scatter_(1, idx, flat.gather(1, idx))

    if scope == "layer":
        return {name: keep(_rows(g)).view_as(g) for name, g in grads.items()}
    names = list(grads)
    sizes = [grads[n][0].numel() for n in names]
    kept = keep(torch.cat([_rows(grads[n]) for n in names], dim=1)).split(sizes, dim=1)
    return {n: part.view_as(grads[n]) for n, part in zip(names, kept)}


def pairwise_masks(clients: int, shapes: dict[str, torch.Size], seed: int, scale: float) -> list[Grads]:
    """Each client's total mask under pairwise additive masking (Bonawitz et al., 2017).

    Clients ``i < j`` share a mask ``m_ij`` (here drawn from a generator seeded by the pair, standing
    in for their key agreement); client ``i`` adds it and client ``j`` subtracts it, so the masks
    cancel in the sum over all clients. Returned in float64 so that the cancellation is exact up
    to float64 rounding.
    """
    total = [{n: torch.zeros(s, dtype=torch.float64) for n, s in shapes.items()} for _ in range(clients)]
    for i in range(clients):
        for j in range(i + 1, clients):
            # modulo 2**64, as torch reads a seed: the same generator as before for every seed, no overflow
            gen = torch.Generator().manual_seed(((seed * 1_000_003 + i) * 1_000_003 + j) % 2**64)
            for n, s in shapes.items():
                m = (torch.rand(s, generator=gen, dtype=torch.float64) * 2 - 1) * scale
                total[i][n] += m
                total[j][n] -= m
    return total


def secure_aggregation(grads: Grads, clients: int, seed: int = 0, mask_scale: float = 100.0) -> tuple[Grads, Grads]:
    """Mask groups of ``clients`` consecutive updates; return (masked updates, aggregates).

    Masked updates have the input's ``[V, ...]`` shape; aggregates are ``[V / clients, ...]``: the
    mean of each group's updates, which is what the server learns (the sum of the masked updates,
    divided by the number of clients), i.e. the gradient of the mean loss over the group's images.
    """
    if not (_integer(clients) and clients >= 2):
        raise ValueError(f"secure aggregation needs at least 2 clients, got {clients}")
    if not (_finite(mask_scale) and mask_scale >= 0):
        raise ValueError(f"secure aggregation mask_scale must be a finite number >= 0, got {mask_scale}")
    V = next(iter(grads.values())).shape[0]
    if V % clients:
        raise ValueError(f"{V} client updates do not split into groups of {clients} clients")
    shapes = {n: g.shape[1:] for n, g in grads.items()}
    masked: Grads = {}
    aggregate: Grads = {}
    for n, g in grads.items():
        masked[n] = torch.empty(g.shape, dtype=torch.float64)
    for group in range(V // clients):
        masks = pairwise_masks(clients, shapes, seed + group, mask_scale)
        for c in range(clients):
            v = group * clients + c
            for n, g in grads.items():
                masked[n][v] = g[v].double().cpu() + masks[c][n]
    for n, g in grads.items():
        aggregate[n] = masked[n].view(V // clients, clients, *g.shape[1:]).sum(dim=1) / clients
    _check_cancellation(grads, aggregate, clients, mask_scale)
    for n, g in grads.items():
        aggregate[n] = aggregate[n].to(g.dtype)
        masked[n] = masked[n].to(g.dtype)
    return masked, aggregate


#: float32's rounding unit (2^-23): the masks must cancel to within it, relative to the signal
FLOAT32_EPS, FLOAT64_EPS = torch.finfo(torch.float32).eps, torch.finfo(torch.float64).eps


def _check_cancellation(grads: Grads, aggregate: Grads, clients: int, mask_scale: float) -> None:
    """Refuse a ``mask_scale`` whose masks do not cancel in the (float64) sum to within float32
    rounding of the signal: the largest error of every group's aggregate against the true mean of its
    updates must stay under ``2^-23 x`` the RMS of that mean. The largest usable scale is the one at
    which float64's rounding of masks of that size (``(clients - 1) x mask_scale x 2^-52``, twice over
    for the margin) reaches that bound."""
    G = next(iter(aggregate.values())).shape[0]
    true = {n: g.double().view(G, clients, *g.shape[1:]).mean(1) for n, g in grads.items()}
    err = torch.stack([_rows(aggregate[n] - t).abs().max(1).values for n, t in true.items()]).max(0).values
    entries = sum(t[0].numel() for t in true.values())
    rms = torch.sqrt(sum(_rows(t).pow(2).sum(1) for t in true.values()) / entries)
    bad = (~(err <= FLOAT32_EPS * rms)).nonzero().flatten().tolist()  # NaN (masks that overflow) is bad too
    if not bad:
        return
    group, e, r = bad[0], float(err[bad[0]]), float(rms[bad[0]])
    estimate = FLOAT32_EPS * r / (2 * (clients - 1) * FLOAT64_EPS)
    unit = 10.0 ** math.floor(math.log10(estimate)) if estimate > 0 else 0.0
    usable = f"about {math.floor(estimate / unit) * unit:.0e}" if estimate > 0 else "0 (the aggregate is zero)"
    raise ValueError(
        f"secure aggregation mask_scale {mask_scale:g} is too large: the masks leave an error of {e:.3g} in the "
        f"aggregate of clients {group * clients}-{(group + 1) * clients - 1}, above float32 rounding of its signal "
        f"(RMS {r:.3g} x 2^-23 = {FLOAT32_EPS * r:.3g}); the largest usable mask_scale for these updates is {usable}")


def dp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """(epsilon, delta)-DP of the subsampled Gaussian mechanism over ``steps`` rounds, from Opacus'
    RDP accountant."""
    from opacus.accountants import RDPAccountant

    if not (_finite(sample_rate) and 0 < sample_rate <= 1 and _integer(steps) and steps >= 1
            and _finite(delta) and 0 < delta < 1 and _finite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError("DP accounting needs 0 < sample_rate <= 1, an integer steps >= 1, 0 < delta < 1 and a finite "
                         f"noise > 0, got sample_rate={sample_rate}, steps={steps}, delta={delta}, noise={noise_multiplier}")
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


# ----------------------------------------------------------------------------- callbacks
class Defense(pl.Callback):
    """A client-side transformation of the shared gradients, applied once in ``setup``."""

    name = "defense"

    def __new__(cls, *args, **kwargs):
        if cls.apply is Defense.apply and cls.transform is Defense.transform:
            found, todo = [], list(Defense.__subclasses__())
            while todo:  # every defense with a name, bases such as ClientSideDefense walked through
                c = todo.pop(0)
                todo.extend(c.__subclasses__())
                found += [c.__name__] if getattr(c, "name", "") else []
            concrete = ", ".join(found)
            raise TypeError(f"{cls.__module__}.{cls.__qualname__} is an abstract defense and cannot be used itself "
                            f"(it defines no apply): use one of {concrete}, or a subclass that defines apply")
        return super().__new__(cls)

    def transform(self, observation: Observation, secret: Optional[Secret]) -> tuple[Observation, Optional[Secret]]:
        return replace(observation, gradients=self.apply(observation.gradients, observation.update_keys)), secret

    def apply(self, grads: Grads, keys: Optional[Sequence[int]] = None) -> Grads:
        """The defended updates; ``keys`` (one per update) seed any randomness per update."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The settings, for result tables."""
        return {"defense": self.name}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if dm is None or getattr(dm, "observation", None) is None:
            raise RuntimeError(f"{type(self).__name__} needs a VictimDataModule that is set up before it")
        applied = dm.__dict__.setdefault("defenses_applied", [])
        if any(d is self for d in applied):
            return
        dm.observation, dm.secret = self.transform(dm.observation, dm.secret)
        applied.append(self)


class GaussianNoise(Defense):
    """Gaussian noise on every gradient entry: ``sigma`` absolute, or relative to each layer's RMS."""

    name = "gaussian_noise"

    def __init__(self, sigma: float, relative: bool = False, seed: int = 0) -> None:
        if not (_finite(sigma) and sigma >= 0):
            raise ValueError(f"noise sigma must be a finite number >= 0, got {sigma}")
        if not isinstance(relative, bool):
            raise ValueError(f"noise relative must be true or false, got {relative!r}")
        if not _integer(seed):
            raise ValueError(f"noise seed must be an integer, got {seed!r}")
        self.sigma, self.relative, self.seed = sigma, relative, seed

    def apply(self, grads: Grads, keys: Optional[Sequence[int]] = None) -> Grads:
        return gaussian_noise(grads, self.sigma, self.relative, self.seed, keys)

    def describe(self) -> dict:
        return {"defense": self.name, "sigma": self.sigma, "noise": "relative to layer RMS" if self.relative else "absolute"}


class NormClip(Defense):
    """Clip each update to L2 norm ``max_norm`` (over all parameters)."""

    name = "norm_clip"

    def __init__(self, max_norm: float) -> None:
        if not (_finite(max_norm) and max_norm > 0):
            raise ValueError(f"clipping max_norm must be a finite number > 0, got {max_norm}")
        self.max_norm = max_norm

    def apply(self, grads: Grads, keys: Optional[Sequence[int]] = None) -> Grads:
        return clip_updates(grads, self.max_norm)

    def describe(self) -> dict:
        return {"defense": self.name, "max_norm": self.max_norm}


class DPGaussian(Defense):
    """The Gaussian mechanism of DP-SGD on each update: clip to ``max_norm``, add noise of std
    ``noise_multiplier * max_norm``. With ``sample_rate``, ``steps`` and ``delta`` it reports the
    (epsilon, delta) this achieves over that many rounds (Opacus' RDP accountant)."""

    name = "dp_gaussian"

    def __init__(self, max_norm: float, noise_multiplier: float, sample_rate: Optional[float] = None,
                 steps: Optional[int] = None, delta: Optional[float] = None, seed: int = 0) -> None:
        if not (_finite(max_norm) and max_norm > 0 and _finite(noise_multiplier) and noise_multiplier >= 0):
            raise ValueError("DPGaussian needs a finite max_norm > 0 and a finite noise_multiplier >= 0, "
                             f"got max_norm={max_norm}, noise_multiplier={noise_multiplier}")
        if not _integer(seed):
            raise ValueError(f"DPGaussian seed must be an integer, got {seed!r}")
        given = [x is not None for x in (sample_rate, steps, delta)]
        if any(given) and not all(given):
            raise ValueError("DP accounting needs all of sample_rate, steps and delta")
        if all(given) and not (_finite(sample_rate) and 0 < sample_rate <= 1 and _integer(steps) and steps >= 1
                               and _finite(delta) and 0 < delta < 1):
            raise ValueError("DP accounting needs 0 < sample_rate <= 1, an integer steps >= 1 and 0 < delta < 1, "
                             f"got sample_rate={sample_rate}, steps={steps}, delta={delta}")
        self.max_norm, self.noise_multiplier, self.seed = max_norm, noise_multiplier, seed
        self.epsilon: Optional[float] = None
        self.delta = delta
        if all(given):
            self.epsilon = dp_epsilon(noise_multiplier, sample_rate, steps, delta) if noise_multiplier > 0 else math.inf
        self.accounting = (sample_rate, steps, delta)

    def apply(self, grads: Grads, keys: Optional[Sequence[int]] = None) -> Grads:
        return gaussian_noise(clip_updates(grads, self.max_norm), self.noise_multiplier * self.max_norm, seed=self.seed,
                              keys=keys)

    def describe(self) -> dict:
        out = {"defense": self.name, "max_norm": self.max_norm, "noise_multiplier": self.noise_multiplier}
        if self.epsilon is not None:
            out.update(epsilon=self.epsilon, delta=self.delta, sample_rate=self.accounting[0], steps=self.accounting[1])
        return out


class TopK(Defense):
    """Top-k sparsification by magnitude: keep ``keep_ratio`` of the entries (global or per layer)."""

    name = "top_k"

    def __init__(self, keep_ratio: float, scope: Literal["global", "layer"] = "global") -> None:
        if not (_finite(keep_ratio) and 0 < keep_ratio <= 1):
            raise ValueError(f"top-k keep_ratio must be in (0, 1], got {keep_ratio}")
        if scope not in ("global", "layer"):
            raise ValueError(f"top-k scope must be 'global' or 'layer', got {scope!r}")
        self.keep_ratio, self.scope = keep_ratio, scope

    def apply(self, grads: Grads, keys: Optional[Sequence[int]] = None) -> Grads:
        return top_k(grads, self.keep_ratio, self.scope)

    def describe(self) -> dict:
        return {"defense": self.name, "keep_ratio": self.keep_ratio, "scope": self.scope}


class SecureAggregation(Defense):
    """Secure aggregation of ``clients`` clients with pairwise additive masks (Bonawitz et al. 2017).

    Consecutive victims form the clients of one aggregation round. ``target="masked"``: the attack
    sees each client's masked update. ``target="aggregate"``: it sees the round's aggregate, i.e.
    one update of ``clients x batch_size`` images (the secret is regrouped to match).
    """

    name = "secure_aggregation"

    def __init__(self, clients: int, target: Literal["masked", "aggregate"] = "aggregate", seed: int = 0,
                 mask_scale: float = 100.0) -> None:
        if not (_integer(clients) and clients >= 2):
            raise ValueError(f"secure aggregation needs at least 2 clients, got {clients}")
        if target not in ("masked", "aggregate"):
            raise ValueError(f"secure aggregation target must be 'masked' or 'aggregate', got {target!r}")
        if not (_finite(mask_scale) and mask_scale >= 0):
            raise ValueError(f"secure aggregation mask_scale must be a finite number >= 0, got {mask_scale}")
        if not _integer(seed):
            raise ValueError(f"secure aggregation seed must be an integer, got {seed!r}")
        self.clients, self.target, self.seed, self.mask_scale = clients, target, seed, mask_scale

    def transform(self, observation: Observation, secret: Optional[Secret]) -> tuple[Observation, Optional[Secret]]:
        masked, aggregate = secure_aggregation(observation.gradients, self.clients, self.seed, self.mask_scale)
        if self.target == "masked":
            return replace(observation, gradients=masked), secret
        if observation.client is not None and not observation.client.is_fedsgd:
            # the mean of K FedAvg updates is not one client's FedAvg update of the K batches together
            raise ValueError("secure aggregation target 'aggregate' is modelled for FedSGD updates only: use target "
                             "'masked', or the FedSGD client (--data.client FedSGD)")
        K = self.clients
        keys = observation.update_keys
        obs = replace(observation, gradients=aggregate, batch_size=observation.batch_size * K,
                      update_keys=tuple(group_key(keys[g * K:(g + 1) * K]) for g in range(len(keys) // K)))
        if secret is not None:
            V, B = secret.labels.shape
            secret = Secret(
                images=secret.images.reshape(V // K, K * B, *secret.images.shape[2:]),
                labels=secret.labels.reshape(V // K, K * B),
                indices=[sum(secret.indices[g * K:(g + 1) * K], []) for g in range(V // K)],
            )
        return obs, secret

    def describe(self) -> dict:
        return {"defense": self.name, "clients": self.clients, "target": self.target}
