"""Target models: the FL global model whose gradients the client shares."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Mapping, Sequence, Union

import torch
from torch import Tensor, nn

from leakage.engine.files import read_tensors
from leakage.engine.lenet import lenet_body, lenet_features
from leakage.engine.precode import LeNetPrecode, MLPPrecode

from leakage.engine.textmodels import TEXT_MODELS, text_model

MODELS = ("lenet", "simple_cnn", "mlp", "resnet18", "resnet18_imagenet", "tabular_mlp", "lenet_precode", "mlp_precode",
          *TEXT_MODELS)


class LeNet(nn.Module):
    """The LeNet variant of the DLG paper (Zhu et al., 2019): three 5x5 convolutions with sigmoid
    activations and one linear layer. Works for any input size (the strides halve it twice)."""

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> None:
        super().__init__()
        self.body = lenet_body(input_shape[0])
        self.fc = nn.Linear(lenet_features(input_shape), num_classes)

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


def resnet18_cifar(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 in the CIFAR variant of Inverting Gradients (Geiping et al., 2020):
    a 3x3 stride-1 stem and no max-pool, so 32x32 images keep their resolution in the first stage."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def resnet18_imagenet(input_shape: Sequence[int] = (3, 224, 224), num_classes: int = 1000) -> nn.Module:
    """torchvision's ResNet-18 as it is (7x7 stride-2 stem, max-pool); its stem takes
    ``input_shape[0]`` channels."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    if input_shape[0] != 3:
        model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def tabular_mlp(input_shape: Sequence[int] = (105,), num_classes: int = 2, hidden: int = 100) -> nn.Module:
    """TabLeak's fully connected net for encoded table rows ``[B, D]``: ``D -> 100 -> 100 -> classes``
    with ReLU, PyTorch's default init (untrained, as in its experiments)."""
    (d,) = input_shape
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


BUILT_IN = {"lenet": LeNet, "simple_cnn": SimpleCNN, "mlp": MLP, "resnet18": resnet18_cifar,
            "resnet18_imagenet": resnet18_imagenet, "tabular_mlp": tabular_mlp,
            "lenet_precode": LeNetPrecode, "mlp_precode": MLPPrecode}
#: built-ins for one table row ``[D]``; the others take images ``[C, H, W]``
ROW_MODELS = ("tabular_mlp",)


def _dlg_init(module: nn.Module) -> None:
    """DLG's weight init: every weight and bias drawn from U(-0.5, 0.5)."""
    for name, p in module.named_parameters():
        nn.init.uniform_(p, -0.5, 0.5)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _what(model: nn.Module, name: str) -> str:
    return f"model {name!r}" if name else f"model {type(model).__name__}"


def check_weights(model: nn.Module, name: str = "") -> None:
    """Refuse parameters that are not floating point (an int64 or bool weight would be cast, and
    its update is meaningless) or that hold NaN or infinite values (every victim would fail)."""
    for key, p in model.named_parameters():
        if nn.parameter.is_lazy(p):  # initialised (as floats) by the first forward pass
            continue
        if not p.is_floating_point():
            raise ValueError(f"{_what(model, name)}: parameter {key!r} is {p.dtype}, not floating point: "
                             "gradient matching needs floating-point weights")
        if not torch.isfinite(p).all():
            raise ValueError(f"{_what(model, name)}: parameter {key!r} holds NaN or infinite values")


def num_logits(model: nn.Module, input_shape: Sequence[int], name: str = "") -> int:
    """The number of logits the model gives: one forward pass of zeros ``[1, *input_shape]`` (in
    eval mode) must give a tensor ``[1, K]``; otherwise a one-line ``ValueError`` says what it gave."""
    shape = tuple(input_shape)
    first = next(model.parameters(), None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape, device=None if first is None else first.device))
    except (RuntimeError, ValueError, IndexError, TypeError) as err:  # what torch's layers raise for a shape they cannot take
        raise ValueError(f"{_what(model, name)} cannot take inputs of shape {shape}: {_first_line(err)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{_what(model, name)} gives {got} for one input of shape {shape}, not logits "
                         "[1, num_classes] (wrap a model that returns a tuple or dict so that it returns the logits)")
    return out.shape[1]


def check_model(model: nn.Module, input_shape: Sequence[int], num_classes: int, name: str = "") -> None:
    """Refuse a model that does not take inputs of ``input_shape`` or does not give ``num_classes``
    logits: one forward pass of zeros ``[1, *input_shape]`` must give ``[1, num_classes]``."""
    k = num_logits(model, input_shape, name)
    if k != num_classes:
        raise ValueError(f"{_what(model, name)} gives (1, {k}) for one input of shape {tuple(input_shape)}, "
                         f"not [1, {num_classes}] logits")


def model_name(model: Union[str, nn.Module]) -> str:
    """A short name of a target model for tables and logs: the built-in name, or the class's import path."""
    if isinstance(model, str):
        return model
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def build_model(
    name: Union[str, nn.Module],
    input_shape: Sequence[int],
    num_classes: int,
    seed: int = 1234,
    weights: str | None = None,
) -> nn.Module:
    """The target model: a built-in by name, its weights drawn from ``seed``, or any ``nn.Module``.

    Built-ins: ``lenet`` (DLG's, with its U(-0.5, 0.5) init), ``simple_cnn``, ``mlp``, ``resnet18``
    (the CIFAR variant), ``resnet18_imagenet`` (torchvision's), ``lenet_precode`` and ``mlp_precode``
    (PRECODE's variational bottleneck: :mod:`leakage.engine.precode`), PyTorch's default init. A module
    given as an object (the CLI builds it from ``class_path`` and ``init_args``) is used as it is.
    ``weights`` (a state_dict, a Lightning checkpoint or a safetensors file, read without unpickling:
    :func:`load_weights`) replaces the weights. The model must take inputs of ``input_shape`` and
    give ``num_classes`` logits (:func:`check_model`); otherwise a one-line ``ValueError`` says why.
    The model is returned in eval mode; the client's mode (train or eval) is applied per update by
    :func:`leakage.federated.client.client_view`.
    """
    shape = tuple(input_shape)
    if isinstance(name, str) and name.lower().replace("-", "_") in TEXT_MODELS:
        return _built_text(name.lower().replace("-", "_"), shape, num_classes, seed, weights)
    if len(shape) not in (1, 3) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape):
        raise ValueError(f"input_shape must be three positive integers [C, H, W] (images) or one [D] (table rows), "
                         f"got {list(shape)}")
    if isinstance(name, str) and (len(shape) == 1) != (name.lower() in ROW_MODELS) and name.lower() in BUILT_IN:
        wanted = "table rows [D]" if name.lower() in ROW_MODELS else "images [C, H, W]"
        raise ValueError(f"model {name!r} takes {wanted}, the data has samples of shape {list(shape)}"
                         + (": use --model.model tabular_mlp" if len(shape) == 1 else ""))
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(name, nn.Module):
        model = name
        label = model_name(model)
    elif isinstance(name, str):
        key = name.lower().replace("-", "_")
        if key not in BUILT_IN:
            if "." in name:  # jsonargparse keeps a class path it cannot import or build as a string
                raise ValueError(
                    f"model {name!r} is not a built-in ({', '.join(MODELS)}) and could not be built as an nn.Module: "
                    "give the import path of an nn.Module class (or of a function returning one) that is importable "
                    "here, with its required init_args (--model.model.ARG VALUE)"
                )
            raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}, or give an nn.Module's import path")
        label = name
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                with warnings.catch_warnings():  # a layer of size 0 is reported below, by the shape check
                    warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
                    model = BUILT_IN[key](shape, num_classes)
            except (RuntimeError, ValueError) as err:  # e.g. a layer of size 0
                raise ValueError(f"model {name!r} cannot take inputs of shape {shape}: {_first_line(err)}") from None
            if key == "lenet":
                _dlg_init(model)
            elif key == "lenet_precode":  # DLG's init for LeNet's convolutions; the bottleneck and head PyTorch's
                _dlg_init(model.body)
    else:
        raise ValueError(f"model must be a built-in name or an nn.Module, got {type(name).__name__}")
    if weights is not None:
        load_weights(model, weights, label)
    check_weights(model, label)
    check_model(model, shape, num_classes, label)
    return model.eval()


def _built_text(name: str, shape: tuple, num_classes: int, seed: int, weights: str | None) -> nn.Module:
    """A built-in text model (:mod:`leakage.engine.textmodels`) for token sequences ``[n]``, seeded."""
    if len(shape) != 1 or not isinstance(shape[0], int) or isinstance(shape[0], bool) or shape[0] < 1:
        raise ValueError(f"model {name!r} takes token sequences [seq_len], the data has samples of shape {list(shape)}: "
                         "use a text source (--data.source BundledText or TextFile)")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = text_model(name, shape[0], num_classes)
    if weights is not None:
        load_weights(model, weights, name)
    check_weights(model, name)
    check_model(model, shape, num_classes, name)
    return model.eval()


def _read_state(path: Path) -> Mapping[str, Tensor]:
    """The tensors of a weights file, never unpickled: safetensors, or ``torch.load(weights_only=True)``."""
    state = read_tensors(path, "model weights file")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a Lightning checkpoint
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"model weights file {path} must hold a state_dict (parameter name -> tensor), "
                         f"got {type(state).__name__}")
    return state


def _strip_prefix(state: Mapping[str, Tensor], wanted: Sequence[str], path: Path) -> Mapping[str, Tensor]:
    """``state`` with the one prefix removed that makes its names the model's (a LightningModule
    stores its network as ``model.``, ``net.``, ...); unchanged when the names already fit."""
    wanted_set = set(wanted)
    if wanted_set <= set(state):
        return state
    prefixes = {k[: len(k) - len(w)] for k in state for w in wanted if k.endswith("." + w)}
    fitting = sorted(p for p in prefixes if all(p + w in state for w in wanted))
    if len(fitting) > 1:
        raise ValueError(f"weights file {path} holds the model's weights under several prefixes "
                         f"({', '.join(repr(p) for p in fitting)}): save the state_dict of the one to attack")
    if not fitting:
        return state  # load_state_dict names what is missing
    return {k[len(fitting[0]):]: v for k, v in state.items() if k.startswith(fitting[0])}


def load_weights(model: nn.Module, weights: str | Path, name: str = "") -> nn.Module:
    """Load weights into ``model`` from a ``state_dict`` file (``.pt``/``.pth``), a Lightning checkpoint
    (``.ckpt``: its ``state_dict``, with a prefix such as ``model.`` stripped when only one fits) or a
    ``.safetensors`` file. Nothing is unpickled; a file that does not fit the model is a one-line error."""
    path = Path(weights)
    state = _read_state(path)
    own = model.state_dict()
    state = _strip_prefix(state, list(own), path)
    for key, t in state.items():  # load_state_dict would cast an int64 or bool tensor into a float weight
        if key in own and own[key].is_floating_point() and not t.is_floating_point():
            raise ValueError(f"weights file {path}: {key!r} is {t.dtype}, not floating point: "
                             "gradient matching needs floating-point weights")
        if key in own and t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"weights file {path}: {key!r} holds NaN or infinite values")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as err:
        first = str(err).strip().splitlines()
        what = f"model {name!r}" if name else f"model {model_name(model)}"
        raise ValueError(f"weights file {path} does not fit {what}: {' '.join(first[:3])[:300]}") from None
    return model


def first_linear(model: nn.Module, input_shape: Sequence[int], name: str = "the model",
                 attack: str = "the analytic attack") -> tuple[str, nn.Linear]:
    """The model's first parametrised layer, which must be an ``nn.Linear`` with a bias fed the
    flattened input (checked on a probe input of ``input_shape``); a one-line ``ValueError`` naming
    ``attack`` otherwise."""
    found = next(((n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))), None)
    if found is None:
        raise ValueError(f"{attack} needs a first layer with parameters; {name} has none")
    layer_name, layer = found
    what = f"the first parametrised layer of {name}, {layer_name!r} ({type(layer).__name__}),"
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"{attack} needs a fully connected first layer: {what} is not an nn.Linear "
                         "(use the built-in mlp or a model whose first layer is nn.Linear with a bias)")
    if layer.bias is None:
        raise ValueError(f"{attack} needs the first layer's bias gradient: {what} has no bias")
    if layer.in_features != math.prod(input_shape):
        raise ValueError(f"{attack} needs the first layer fed the flattened input: {what} takes "
                         f"{layer.in_features} features, the input has {math.prod(input_shape)}")
    seen: list[Tensor] = []
    hook = layer.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach()))
    probe = torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            model(probe.to(layer.weight.device))
    finally:
        hook.remove()
    if len(seen) != 1 or not torch.equal(seen[0].cpu().reshape(2, -1), probe.reshape(2, -1)):
        raise ValueError(f"{attack} needs the first layer fed the flattened input: {what} "
                         "gets something else (a transformed input, or it runs more than once)")
    return layer_name, layer
