"""The FL client: what it computes and shares, and loading gradients a user captured."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .precision import full_precision


def per_problem_gradients(model: nn.Module, x: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """The gradient of the model's cross-entropy (mean over each batch) for many batches at once.

    ``x`` is ``[P, B, C, H, W]``; ``targets`` is ``[P, B]`` class indices or ``[P, B, K]`` class
    probabilities (DLG's soft labels). Returns ``{parameter name: [P, *shape]}``. When ``x`` or
    ``targets`` require grad, the result keeps the graph, so a loss on these gradients can be
    back-propagated to the inputs (the attack's outer backward).
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p: dict[str, Tensor], xb: Tensor, tb: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, (p, buffers), (xb,)), tb)

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, targets)


def client_gradients(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Each victim's shared update: the gradient a client sends after ``loss.backward()``.

    ``x`` is ``[V, B, C, H, W]``, ``y`` is ``[V, B]``; returns ``{name: [V, *shape]}``, detached.
    """
    with full_precision():  # as the attack: no TF32 or bf16 shortcut in the client's float32 math
        grads = per_problem_gradients(model, x, y)
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
    if path.is_dir():
        raise ValueError(f"gradient file {path} is a directory: give the .safetensors or .pt file itself")
    if not path.is_file():
        raise FileNotFoundError(f"gradient file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            grads = load_file(str(path))
        else:
            grads = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupted, truncated or hostile files
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read gradient file {path}: {msg[:200]}") from None
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
