"""Target models: the FL global model whose gradients the client shares."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

MODELS = ("lenet", "simple_cnn", "mlp")


class LeNet(nn.Module):
    """The LeNet variant of the DLG paper (Zhu et al., 2019): three 5x5 convolutions with sigmoid
    activations and one linear layer. Works for any input size (the strides halve it twice)."""

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> None:
        super().__init__()
        c, h, w = input_shape
        self.body = nn.Sequential(
            nn.Conv2d(c, 12, kernel_size=5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1),
            nn.Sigmoid(),
        )
        h, w = math.ceil(h / 4), math.ceil(w / 4)
        self.fc = nn.Linear(12 * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


class SimpleCNN(nn.Module):
    """A small ReLU CNN: two 3x3 convolutions with max pooling, then two linear layers."""

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        c, h, w = input_shape
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Linear(width * (h // 4) * (w // 4), 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


class MLP(nn.Module):
    """A fully connected ReLU network on the flattened input."""

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, hidden: int = 256) -> None:
        super().__init__()
        n = math.prod(input_shape)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _dlg_init(module: nn.Module) -> None:
    """DLG's weight init: every weight and bias drawn from U(-0.5, 0.5)."""
    for name, p in module.named_parameters():
        nn.init.uniform_(p, -0.5, 0.5)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def check_model(model: nn.Module, input_shape: Sequence[int], num_classes: int, name: str = "") -> None:
    """Refuse a model that does not take inputs of ``input_shape`` or does not give ``num_classes``
    logits: one forward pass of zeros ``[1, *input_shape]`` must give ``[1, num_classes]``."""
    shape = tuple(input_shape)
    what = f"model {name!r}" if name else f"model {type(model).__name__}"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape))
    except (RuntimeError, ValueError, IndexError) as err:  # what torch's layers raise for a shape they cannot take
        raise ValueError(f"{what} cannot take inputs of shape {shape}: {_first_line(err)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{what} gives {got} for one input of shape {shape}, not [1, {num_classes}] logits")


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    seed: int = 1234,
    weights: str | None = None,
) -> nn.Module:
    """Build a target model by name, its weights drawn from ``seed`` or read from a state_dict file.

    ``lenet`` uses DLG's U(-0.5, 0.5) init; the others PyTorch's default init. The model must take
    inputs of ``input_shape`` and give ``num_classes`` logits (:func:`check_model`); otherwise a
    one-line ``ValueError`` names the model, the shape and the reason.
    """
    key = name.lower().replace("-", "_")
    classes = {"lenet": LeNet, "simple_cnn": SimpleCNN, "mlp": MLP}
    if key not in classes:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape):
        raise ValueError(f"input_shape must be three positive integers [C, H, W], got {list(shape)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            with warnings.catch_warnings():  # a layer of size 0 is reported below, by the shape check
                warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
                model = classes[key](shape, num_classes)
        except (RuntimeError, ValueError) as err:  # e.g. a layer of size 0
            raise ValueError(f"model {name!r} cannot take inputs of shape {shape}: {_first_line(err)}") from None
        if key == "lenet":
            _dlg_init(model)
    check_model(model, shape, num_classes, name)
    if weights is not None:
        path = Path(weights)
        if path.is_dir():
            raise ValueError(f"model weights file {path} is a directory, not a file")
        if not path.is_file():
            raise FileNotFoundError(f"model weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupted, truncated or hostile (non-tensor pickle) files
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"cannot read model weights file {path}: {first[:200]}") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"model weights file {path} must hold a state_dict, got {type(state).__name__}")
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as err:
            first = str(err).strip().splitlines()
            raise ValueError(f"weights file {path} does not fit model {name!r}: {' '.join(first[:3])}") from None
    return model.eval()
