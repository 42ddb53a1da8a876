"""The server of the threat model: honest-but-curious (the default), or malicious and what it changes.

An FL server sends the global model to its clients; each client computes its update on the model it
received. An honest-but-curious server sends the model as it is and only looks at the updates. A
malicious server changes the model first, so that the updates give the inputs away:

- :class:`ImprintServer` (Fowl et al., "Robbing the Fed", ICLR 2022) inserts an imprint module at
  the model's input: ``num_bins`` ReLU units that all measure one feature of the input (its mean, the
  brightness of an image), each with a bias that cuts the feature at one quantile of its public
  distribution, then a fixed map back to the input's shape (the units' mean times a small gain, added
  to every input value: the rest of the model sees the input shifted by a small constant). Unit ``i`` fires for the inputs whose feature
  exceeds cut ``i``, and every unit passes the same gradient back, so rows ``i`` and ``i + 1`` of
  the module's gradient differ by exactly the inputs whose feature falls between the two cuts: where
  one input does, ``x = (dW_i - dW_{i+1}) / (db_i - db_{i+1})`` (:class:`leakage.attacks.imprint.ImprintAttack`).
- :class:`TrapWeightServer` (Boenisch et al., "When the Curious Abandon Honesty", EuroS&P 2023)
  plants trap weights in the model's fully connected first layer: every row is half negative, half
  positive weights scaled by ``trap_scale < 1``, with no bias, so each ReLU unit fires for few
  inputs; a row that fires for exactly one input gives it, ``x = dW_i / db_i``
  (:class:`leakage.attacks.trap_weights.TrapWeightAttack`).
- :class:`FishingServer` (Wen et al., "Fishing for User Data in Large-Batch Federated Learning", ICML
  2022) zeroes the classifier's rows of every class but one and gives them a large bias: the update of
  every layer below the classifier is that of the batch's inputs of the target class alone
  (:class:`leakage.attacks.fishing.FishingAttack`).

The server is public to the attacker (it is the attacker): the observation records it
(:attr:`leakage.records.Observation.server`), with the model it sent, and every report states it in its
first line (:meth:`Server.describe`). The change is made before the client computes its update
(:meth:`leakage.data.datamodule.VictimDataModule.prepare`): FedSGD and FedAvg clients train the changed model.
"""

from __future__ import annotations

import copy
import importlib
import math
from statistics import NormalDist
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leakage.engine.models import first_linear

#: what an honest server's reports say first
HONEST = "honest-but-curious server"
#: what the threat model's line adds when the victims' labels are public (TabLeak's setting)
PUBLIC_LABELS = "; the labels are public (known to the server)"
MAX_BINS = 4096
#: the imprint module's weights (``num_bins x`` input values) at most: a larger module is refused
MAX_IMPRINT_WEIGHTS = 2 ** 25
#: public statistics of the imprint's feature, the mean value of one input (its brightness), per dataset:
#: MNIST's measured on the bundled test images 500-999 (not those the presets attack, 0-255);
#: CIFAR-10's mean is the training split's published channel means averaged, and its spread the
#: published per-pixel standard deviation (wider than that of image means: the bins spread wider)
FEATURE_STATISTICS = {"mnist": (0.1239, 0.0407), "cifar10": (0.4734, 0.25)}
#: the imprint module's output gain: the rest of the model sees ``x + gain * mean(relu(feature - cuts))``
IMPRINT_GAIN = 1e-2
#: the scale its units measure at (their weights and biases): measured on FedAvg updates of MNIST
#: (one epoch of mini-batches of B/4), small enough that ``w_K - w_0`` keeps the gradients' digits and
#: large enough that the bins barely move over the local steps (16/16 and 60/64 images at 0.2; 4/16 at
#: 1e-3, 13/16 at 1)
IMPRINT_SCALE = 0.2


class Server:
    """The honest-but-curious server: it sends the global model unchanged (the data module's default;
    ``--data.server ImprintServer`` or ``TrapWeightServer`` chooses a malicious one)."""

    name = "honest"
    malicious = False

    def __init__(self) -> None:
        #: the model this server sent, when it changed it (None: the global model as it is)
        self.model: Optional[nn.Module] = None

    def send(self, model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
        """The model the clients receive and train, for inputs of ``input_shape``."""
        return model

    def describe(self) -> str:
        """The threat model in a few words: the first line of every report."""
        return HONEST

    def settings(self) -> dict:
        return {"server": self.name}


class ImprintBlock(nn.Module):
    """Robbing the Fed's imprint module: ``len(cuts)`` ReLU units measuring the mean of the input, unit
    ``i`` cut at ``cuts[i]`` (increasing), their mean added back to every input value.

    The map back is fixed (no parameters): every unit passes the same gradient back, and keeps doing
    so over a FedAvg client's local steps, which train only ``measure``. The units measure at
    ``scale`` and the map back multiplies by ``gain / scale`` (breaching's gain): the rest of the model
    sees the input shifted by ``gain`` times the mean of ``relu(feature - cut)``."""

    def __init__(self, input_shape: Sequence[int], cuts: Tensor, gain: float = IMPRINT_GAIN,
                 scale: float = IMPRINT_SCALE) -> None:
        super().__init__()
        self.measure = nn.Linear(math.prod(input_shape), len(cuts))
        self.amplify = gain / scale
        with torch.no_grad():
            self.measure.weight.fill_(scale / math.prod(input_shape))
            self.measure.bias.copy_(-scale * cuts)

    def forward(self, x: Tensor) -> Tensor:
        shift = self.amplify * F.relu(self.measure(x.flatten(1))).mean(dim=1)
        return x + shift.view(-1, *([1] * (x.dim() - 1)))


class Imprinted(nn.Module):
    """The model a :class:`ImprintServer` sends: the imprint module, then the global model."""

    def __init__(self, imprint: ImprintBlock, model: nn.Module) -> None:
        super().__init__()
        self.imprint = imprint
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.imprint(x))


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


class ImprintServer(Server):
    """Insert an imprint module of ``num_bins`` bins at the model's input (see the module docstring).

    Args:
        num_bins: the module's units, 2 to :data:`MAX_BINS`; an input is recovered exactly when it is
            alone in its bin, so more bins than inputs per update recover more.
        feature_mean: the mean of the feature's public distribution (the feature: the mean value of
            one input), a Gaussian whose quantiles ``1/num_bins, ..., (num_bins - 1)/num_bins`` are the
            cuts (the first bin takes everything below). Not given: the attacked dataset's public
            statistics (:data:`FEATURE_STATISTICS`, filled in by the data module), else 0.5.
        feature_std: the standard deviation of that Gaussian. Not given: the dataset's, else 0.25.
    """

    name = "imprint"
    malicious = True

    def __init__(self, num_bins: int = 64, feature_mean: Optional[float] = None,
                 feature_std: Optional[float] = None) -> None:
        super().__init__()
        num_bins = _positive_int("num_bins", num_bins)
        if not 2 <= num_bins <= MAX_BINS:
            raise ValueError(f"the imprint module takes 2 to {MAX_BINS} bins, got num_bins {num_bins}")
        for name, value in (("feature_mean", feature_mean), ("feature_std", feature_std)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name} must be a number, got {value!r}")
        self.num_bins = num_bins
        self._given = (feature_mean, feature_std)
        self.for_dataset(None)
        #: the parameter names of the module's measuring layer in the sent model
        self.layer = "imprint.measure"

    def for_dataset(self, dataset: Optional[str]) -> "ImprintServer":
        """Fill the feature statistics not given with ``dataset``'s public ones
        (:data:`FEATURE_STATISTICS`; else the data range [0, 1]: mean 0.5, std 0.25) and cut the bins."""
        mean, std = FEATURE_STATISTICS.get(dataset or "", (0.5, 0.25))
        given_mean, given_std = self._given
        feature_mean = mean if given_mean is None else given_mean
        feature_std = std if given_std is None else given_std
        if not (math.isfinite(feature_mean) and math.isfinite(feature_std) and feature_std > 0):
            raise ValueError(f"the imprint's feature statistics must be finite with feature_std > 0, got mean "
                             f"{feature_mean} and std {feature_std}")
        self.feature_mean, self.feature_std = float(feature_mean), float(feature_std)
        gauss = NormalDist(self.feature_mean, self.feature_std)
        inner = [gauss.inv_cdf(i / self.num_bins) for i in range(1, self.num_bins)]
        # the first cut lies ten standard deviations below the mean: every input fires unit 0
        self.cuts = torch.tensor([min(inner[0], self.feature_mean) - 10 * self.feature_std, *inner])
        return self

    def send(self, model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
        size = math.prod(input_shape)
        if self.num_bins * size > MAX_IMPRINT_WEIGHTS:
            raise ValueError(f"no room for an imprint module of {self.num_bins} bins on inputs of shape "
                             f"{tuple(input_shape)}: it needs {self.num_bins} x {size} weights, more than "
                             f"{MAX_IMPRINT_WEIGHTS}; use fewer bins (at most {MAX_IMPRINT_WEIGHTS // size})")
        device = next(model.parameters()).device
        sent = Imprinted(ImprintBlock(input_shape, self.cuts), model).to(device)
        try:
            with torch.no_grad():
                sent(torch.zeros(2, *input_shape, device=device))
        except (RuntimeError, ValueError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise ValueError(f"no room for the imprint module: the model does not take the module's output, inputs "
                             f"of shape {tuple(input_shape)} ({reason})") from None
        self.model = sent
        return sent

    def describe(self) -> str:
        return (f"malicious server: imprint module with {self.num_bins} bins (Robbing the Fed; mean-brightness "
                f"cuts from a Gaussian of mean {self.feature_mean:g}, std {self.feature_std:g})")

    def settings(self) -> dict:
        return {"server": self.name, "num_bins": self.num_bins, "feature_mean": self.feature_mean,
                "feature_std": self.feature_std}


class TrapWeightServer(Server):
    """Plant trap weights in the model's fully connected first layer (see the module docstring).

    Args:
        trap_scale: the factor, in (0, 1), of each row's positive weights: smaller fires each unit for
            fewer inputs (a row fires for an input whose positive half outweighs its negative half by
            ``1 / trap_scale``).
        seed: the public seed of the weights and of which half of each row is negative.
    """

    name = "trap_weights"
    malicious = True

    def __init__(self, trap_scale: float = 0.7, seed: int = 0) -> None:
        super().__init__()
        if not (math.isfinite(trap_scale) and 0 < trap_scale < 1):
            raise ValueError(f"trap_scale must be in (0, 1) (positive weights scaled down), got {trap_scale}")
        self.trap_scale, self.seed = float(trap_scale), _positive_int("seed", seed)
        self.layer: Optional[str] = None  # the first layer's name in the sent model, once sent

    def send(self, model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
        sent = copy.deepcopy(model)
        self.layer, layer = first_linear(sent, input_shape, "the model", attack="planting trap weights")
        rows, size = layer.weight.shape
        gen = torch.Generator().manual_seed(self.seed)
        magnitude = torch.randn(rows, size, generator=gen).abs() / math.sqrt(size)
        negative = torch.rand(rows, size, generator=gen).argsort(dim=1) < size // 2  # half of each row
        weight = torch.where(negative, -magnitude, self.trap_scale * magnitude)
        with torch.no_grad():
            layer.weight.copy_(weight.to(layer.weight))
            layer.bias.zero_()
        self.model = sent
        return sent

    def describe(self) -> str:
        return (f"malicious server: trap weights in the first layer (When the Curious Abandon Honesty; "
                f"positive weights scaled by {self.trap_scale:g})")

    def settings(self) -> dict:
        return {"server": self.name, "trap_scale": self.trap_scale}


class FishingServer(Server):
    """Class fishing (Wen et al., "Fishing for User Data in Large-Batch Federated Learning via Gradient
    Magnification", ICML 2022; breaching's ``malicious-fishing`` class attack): the classifier's rows of
    every class but ``target_class`` get zero weights and the bias ``multiplier``, the target's row is
    kept.

    Every other class then wins every input by about ``multiplier``, so the target class's probability
    ``p_t`` is near 0 for every input. The gradient that reaches the layers below the classifier is
    ``(p - y) W`` per input, and only the target's row of ``W`` is non-zero: an input of another class
    passes back ``p_t W_t`` (about ``e^-multiplier``, nothing), an input of the target class
    ``(p_t - 1) W_t``. The update of every layer below the classifier is then that of the batch's
    target-class inputs alone, divided by ``B``; with one such input, its own gradient
    (:class:`leakage.attacks.fishing.FishingAttack` inverts it as a batch of one). The bias gradient
    gives the batch's label counts: ``-B db_t`` inputs of the target class.

    Args:
        target_class: the class whose input the server fishes for (0 to ``num_classes - 1``).
        multiplier: the bias every other class gets, in logits (> 0): the margin by which it wins;
            an input of another class leaks ``p_t``, about ``e^-multiplier / (K - 1)``, into the
            fished gradient. breaching's class attack uses 1000.
    """

    name = "fishing"
    malicious = True

    def __init__(self, target_class: int = 0, multiplier: float = 1000.0) -> None:
        super().__init__()
        target_class = _positive_int("target_class", target_class)
        if target_class < 0:
            raise ValueError(f"target_class must be a class index >= 0, got {target_class}")
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not (
                math.isfinite(multiplier) and multiplier > 0):
            raise ValueError(f"multiplier must be a finite number > 0 (the other classes' bias), got {multiplier!r}")
        self.target_class, self.multiplier = target_class, float(multiplier)
        self.layer: Optional[str] = None  # the classifier's name in the sent model, once sent

    def send(self, model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
        sent = copy.deepcopy(model)
        classifiers = [(n, m) for n, m in sent.named_modules() if isinstance(m, nn.Linear)]
        if not classifiers or classifiers[-1][1].bias is None:
            raise ValueError("class fishing changes the classifier: the model's last layer must be an nn.Linear with "
                             "a bias (the class logits)")
        self.layer, layer = classifiers[-1]
        if not self.target_class < layer.out_features:
            raise ValueError(f"target_class {self.target_class} is not a class of the model: its classifier "
                             f"{self.layer!r} gives {layer.out_features} logits (0-{layer.out_features - 1})")
        others = torch.arange(layer.out_features) != self.target_class
        with torch.no_grad():
            layer.weight[others] = 0.0
            layer.bias[others] = self.multiplier
        self.model = sent
        return sent

    def describe(self) -> str:
        return (f"malicious server: class fishing for class {self.target_class} (Wen et al.; the other classes' "
                f"rows zeroed, their bias {self.multiplier:g})")

    def settings(self) -> dict:
        return {"server": self.name, "target_class": self.target_class, "multiplier": self.multiplier}


#: the servers by class name (what ``--data.server NAME`` takes)
SERVER_CLASSES = {cls.__name__: cls for cls in (Server, ImprintServer, TrapWeightServer, FishingServer)}
#: servers of their own modules (which import this one), by class name -> module
LATER_SERVERS = {"DecepticonServer": "leakage.federated.decepticons"}


def server_from_config(value: object, dataset: Optional[str] = None) -> Server:
    """The server a config's ``data.server`` describes (unset: the honest server; a class name, or
    ``class_path``/``init_args`` of one of :data:`SERVER_CLASSES`), its imprint statistics filled
    with ``dataset``'s: what a sweep's report names as the threat model before its cells run."""
    if value is None:
        return Server()
    init_args: dict = {}
    if isinstance(value, dict):
        init_args = dict(value.get("init_args") or {})
        value = value.get("class_path")
    name = str(value).rpartition(".")[2]
    if name in LATER_SERVERS and name not in SERVER_CLASSES:  # imported here: their modules import this one
        SERVER_CLASSES[name] = getattr(importlib.import_module(LATER_SERVERS[name]), name)
    if name not in SERVER_CLASSES and name not in LATER_SERVERS:
        raise ValueError(f"unknown server {value!r}; choose one of {', '.join(dict.fromkeys([*SERVER_CLASSES, *LATER_SERVERS]))}")
    try:
        server = SERVER_CLASSES[name](**init_args)
    except TypeError as err:
        raise ValueError(f"server {name}: {err}") from None
    return server.for_dataset(dataset) if isinstance(server, ImprintServer) else server
