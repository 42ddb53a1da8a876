"""The FL client: what it computes and shares, and loading gradients a user captured."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from leakage.engine.files import read_tensors
from leakage.engine.models import num_logits
from leakage.engine.precision import full_precision
from leakage.federated.trainable import check_patterns, only, trained_names

#: how a client runs its model for its update: ``train`` (what FL clients do: BatchNorm normalises
#: with the batch's own statistics) or ``eval`` (running statistics)
CLIENT_MODES = ("train", "eval")
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class Client:
    """A client protocol: how the victims' client computes the update it shares. Public to the attacker.

    The data module takes one as its ``client`` (``--data.client FedAvg --data.client.local_steps 5``;
    ``leakage fit --data.client.help FedAvg`` lists one protocol's settings).

    Args:
        client_mode: how the client runs the model for its update: ``train`` (the default, what FL
            clients do: BatchNorm normalises with the batch's own statistics; dropout off) or ``eval``
            (running statistics). The attack simulates the same mode. Models without BatchNorm give
            the same update either way.
        trainable: the parameters the client trains and shares, as regular expressions searched in their
            names (``[lora_, score]``: LoRA adapters and GPT-2's classifier head); None (the default): every
            parameter. See :mod:`leakage.federated.trainable`.
        freeze: parameters the client does not train, and so never shares (``[wte, wpe]``: GPT-2's token
            and position embeddings), as regular expressions; applied after ``trainable``.
    """

    #: the protocol's name in reports
    name = ""

    def __init__(self, client_mode: str = "train", trainable: Optional[list[str]] = None,
                 freeze: Optional[list[str]] = None) -> None:
        if client_mode not in CLIENT_MODES:
            raise ValueError(f"unknown client_mode {client_mode!r}; choose one of {', '.join(CLIENT_MODES)}")
        self.client_mode = client_mode
        self.trainable = check_patterns(trainable, "client.trainable")
        self.freeze = check_patterns(freeze, "client.freeze") or ()

    @property
    def trains_all(self) -> bool:
        """Whether the client trains (and shares) every parameter: no ``trainable`` or ``freeze`` pattern."""
        return self.trainable is None and not self.freeze

    def trained(self, model: nn.Module) -> list[str]:
        """The names of ``model``'s parameters this client trains and shares (checked: one line when a pattern
        matches nothing or nothing is left)."""
        return trained_names((n for n, _ in model.named_parameters()), self.trainable, self.freeze)

    def shared_update(self, update: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """The part of a full ``update`` this client shares: the entries of the parameters it trains."""
        return dict(update) if self.trains_all else only(update, self.trained(model))

    def for_batch(self, batch_size: int):
        """The FedAvg client's public settings for a batch of ``batch_size`` images
        (:class:`leakage.federated.fedavg.FedAvgClient`), or None for FedSGD's one gradient."""
        return None

    def __repr__(self) -> str:
        parts = "" if self.trains_all else f", trainable={self.trainable!r}, freeze={list(self.freeze)!r}"
        return f"{type(self).__name__}(client_mode={self.client_mode!r}{parts})"


class FedSGD(Client):
    """FedSGD: the client shares one gradient of its batch's mean loss (the default).

    Args:
        client_mode: ``train`` or ``eval`` (see :class:`Client`).
        trainable: the parameters it trains and shares, as name patterns; None: all (see :class:`Client`).
        freeze: parameters it does not train nor share, as name patterns (see :class:`Client`).
    """

    name = "fedsgd"

    def __init__(self, client_mode: Literal["train", "eval"] = "train", trainable: Optional[list[str]] = None,
                 freeze: Optional[list[str]] = None) -> None:
        super().__init__(client_mode, trainable, freeze)


def client_view(model: nn.Module, mode: str = "train") -> nn.Module:
    """The module a client's forward pass runs, sharing ``model``'s parameters (never its buffers).

    ``eval``: a copy in eval mode (BatchNorm uses its running statistics). ``train``: a copy whose
    BatchNorm layers normalise with the batch's own statistics and keep no running statistics
    (``torch.func.replace_all_batch_norm_modules_``), so that under ``vmap`` every problem uses its
    own batch and ``model``'s running buffers are neither read nor written. Dropout runs as in eval
    mode in both: a client's dropout mask is a private random draw the server never sees, so a
    random mask would make the update irreproducible for any attacker; ``leakage`` models the
    client with dropout off (an update with dropout on is a different, harder threat model).
    """
    if mode not in CLIENT_MODES:
        raise ValueError(f"unknown client mode {mode!r}; choose one of {', '.join(CLIENT_MODES)}")
    params = dict(model.named_parameters(remove_duplicate=False))  # a tied weight under each of its names
    view = copy.deepcopy(model)
    for name, _ in list(view.named_parameters(remove_duplicate=False)):  # share the parameters, do not copy them
        owner, _, leaf = name.rpartition(".")
        setattr(view.get_submodule(owner) if owner else view, leaf, params[name])
    if mode == "train":
        replace_all_batch_norm_modules_(view)
        view.train()
        for m in view.modules():
            if isinstance(m, _DROPOUT):
                m.eval()
    else:
        view.eval()
    return view


def batchnorm_layers(model: nn.Module) -> list[str]:
    """Names of the model's BatchNorm layers that keep running statistics (what ``bn_weight`` needs)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None]


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (biased) variance of a BatchNorm layer's input ``[B, C, ...]``."""
    dims = [0, *range(2, x.dim())]
    return x.mean(dims), x.var(dims, unbiased=False)


def per_problem_gradients(model: nn.Module, x: Tensor, targets: Tensor, forward: Optional[nn.Module] = None,
                          bn_layers: Optional[list[str]] = None):
    """The gradient of the model's cross-entropy (mean over each batch) for many batches at once.

    ``x`` is ``[P, B, C, H, W]``; ``targets`` is ``[P, B]`` class indices or ``[P, B, K]`` class
    probabilities (DLG's soft labels). Returns ``{parameter name: [P, *shape]}``. When ``x`` or
    ``targets`` require grad, the result keeps the graph, so a loss on these gradients can be
    back-propagated to the inputs (the attack's outer backward).

    ``forward`` is the module whose forward pass runs, with ``model``'s parameters (default:
    ``model`` itself; :func:`client_view` gives the client's train or eval mode). With
    ``bn_layers`` (names of BatchNorm layers of ``forward``), also returns ``{layer: (mean [P, C],
    var [P, C])}`` of each layer's input per problem, for the BatchNorm-statistics prior.
    """
    net = model if forward is None else forward
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}
    if not bn_layers:
        def loss(p: dict[str, Tensor], xb: Tensor, tb: Tensor) -> Tensor:
            return F.cross_entropy(functional_call(net, (p, buffers), (xb,)), tb)

        return vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")(params, x, targets)

    def loss_and_moments(p: dict[str, Tensor], xb: Tensor, tb: Tensor):
        moments: dict[str, tuple[Tensor, Tensor]] = {}
        hooks = [net.get_submodule(name).register_forward_pre_hook(
            lambda mod, inp, name=name: moments.__setitem__(name, _moments(inp[0]))) for name in bn_layers]
        try:
            out = functional_call(net, (p, buffers), (xb,))
        finally:
            for h in hooks:
                h.remove()
        return F.cross_entropy(out, tb), moments

    return vmap(grad(loss_and_moments, has_aux=True), in_dims=(None, 0, 0), randomness="different")(params, x, targets)


def check_batch(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """Refuse client batches whose update would be silently wrong: ``x`` must be floating-point
    samples ``[V, B, *sample_shape]`` (images ``[C, H, W]``, table rows ``[D]``) the model takes, with ``B >= 1``, and ``y`` ``[V, B]`` integer class
    indices in ``[0, K)`` for the model's ``K`` logits (cross-entropy would drop a label of -100,
    its ``ignore_index``, from the update, and an integer cast cuts a label of 7.9 to 7)."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() < 3 or tuple(y.shape) != tuple(x.shape[:2]):
        raise ValueError(f"x of shape {tuple(x.shape)} and labels of shape {tuple(y.shape)} do not fit: x is "
                         "[victims, batch, *sample_shape] with one label per sample")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"the client's batch is empty (x of shape {tuple(x.shape)}): an update needs at least one image")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating-point samples, got {x.dtype}")
    check_labels(y, num_logits(model, x.shape[2:]))


def check_labels(y: Tensor, num_classes: int) -> None:
    """Refuse labels that are not integer class indices in ``[0, num_classes)``."""
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels must be integer class indices, got {y.dtype} (a cast would cut 7.9 to 7)")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(f"labels must be class indices in [0, {num_classes}), got {int(y[bad][0])} (cross-entropy "
                         "would leave an image labelled -100, its ignore_index, out of the update)")


def client_gradients(model: nn.Module, x: Tensor, y: Tensor, mode: str = "train") -> dict[str, Tensor]:
    """Each victim's shared update: the gradient a client sends after ``loss.backward()``.

    ``x`` is ``[V, B, C, H, W]``, ``y`` is ``[V, B]``; returns ``{name: [V, *shape]}``, detached.
    ``mode`` is the client's: ``train`` (BatchNorm with the batch's own statistics, as
    ``model.train(); loss.backward()``) or ``eval``; see :func:`client_view`. ``model`` itself,
    its running statistics included, is left as it was. The batch is checked first (:func:`check_batch`).
    """
    check_batch(model, x, y)
    with full_precision():  # as the attack: no TF32 or bf16 shortcut in the client's float32 math
        try:
            grads = per_problem_gradients(model, x, y.long(), forward=client_view(model, mode))
        except (RuntimeError, ValueError) as err:  # e.g. BatchNorm in train mode on one value per channel
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            hint = " (BatchNorm in train mode needs more than one value per channel: a larger batch, larger " \
                   "images, or client_mode eval)" if "per channel" in reason else ""
            raise ValueError(f"the client cannot compute its {mode}-mode update on batches of {x.shape[1]} "
                             f"inputs of shape {tuple(x.shape[2:])}: {reason}{hint}") from None
    return {k: v.detach() for k, v in grads.items()}


def validate_gradients(grads: Mapping[str, Tensor], model: nn.Module, source: str = "gradients") -> dict[str, Tensor]:
    """Check captured gradients against the model's parameter names and shapes.

    Accepts one update (each tensor shaped like its parameter) or several (a leading victim
    dimension); returns ``{name: [V, *shape]}`` in float32. Raises ``ValueError`` with one clear
    line on any mismatch or non-finite value.
    """
    expected = {k: tuple(p.shape) for k, p in model.named_parameters()}
    missing = [k for k in expected if k not in grads]
    extra = [k for k in grads if k not in expected]
    if missing or extra:
        raise ValueError(
            f"{source} does not fit the model: missing {missing or 'nothing'}, unexpected {extra or 'nothing'}"
        )
    out: dict[str, Tensor] = {}
    victims = set()
    for name, shape in expected.items():
        g = grads[name]
        if not isinstance(g, Tensor) or not g.is_floating_point():
            raise ValueError(f"{source}: entry {name!r} is not a floating-point tensor")
        if tuple(g.shape) == shape:
            g = g.unsqueeze(0)
        elif tuple(g.shape[1:]) != shape:
            raise ValueError(f"{source}: {name!r} has shape {tuple(g.shape)}, the model needs {shape} (or [V, *{shape}])")
        if not torch.isfinite(g).all():
            raise ValueError(f"{source}: {name!r} holds NaN or infinite values")
        victims.add(g.shape[0])
        out[name] = g.detach().to(torch.float32).contiguous()
    if len(victims) != 1:
        raise ValueError(f"{source}: entries disagree on the number of updates: {sorted(victims)}")
    return out


def load_gradients(path: str | Path, model: nn.Module) -> dict[str, Tensor]:
    """Load captured gradients from a ``.safetensors`` file or a tensor-only ``torch.save`` file.

    Never unpickles arbitrary objects: ``.pt`` files go through ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    grads = read_tensors(path, "gradient file")
    if not isinstance(grads, Mapping):
        raise ValueError(f"gradient file {path} must hold a mapping of parameter name to tensor, got {type(grads).__name__}")
    return validate_gradients(grads, model, source=f"gradient file {path}")


def save_gradients(grads: Mapping[str, Tensor], path: str | Path) -> None:
    """Write gradients ``{name: tensor}`` to ``.safetensors`` (or a tensor-only ``.pt``)."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in grads.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
