"""Captured client updates: one ``.safetensors`` file per (round, client), as a server records them.

A capture file holds what an honest-but-curious server sees of one client in one round:

- ``update/<parameter name>``: the client's update (``delta``: returned weights minus the global
  weights it received; or a pseudo-gradient), one tensor per model parameter;
- ``global/<state_dict name>``: the global weights the client started from (parameters and
  buffers, the model's ``state_dict``);
- metadata (safetensors' string header): ``format``, ``share``, ``num_examples``, ``update_key``,
  ``round``, ``client`` and the client's public FedAvg settings (``local_steps``, ``local_lr``,
  ``local_batch_size``, ``shuffle``, ``shuffle_seed``) when the server sent them.

``leakage fit --data.source CapturedGradients --data.source.gradient_file FILE`` reads it: the global weights are
loaded into the target model (names and shapes checked against it), the update becomes the
observation. Files are read with safetensors only: nothing is unpickled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from leakage.engine.files import regular_file

FORMAT = "leakage.federated.capture.v1"
UPDATE, GLOBAL = "update/", "global/"
#: the client settings a capture may record, as they are named in the data module
CLIENT_SETTINGS = ("local_steps", "local_lr", "local_batch_size", "shuffle", "shuffle_seed")


def save_capture(path: str | Path, update: Mapping[str, Tensor], global_state: Mapping[str, Tensor],
                 num_examples: int, share: str = "delta", update_key: Optional[int] = None,
                 settings: Optional[Mapping[str, Any]] = None, **extra: Any) -> Path:
    """Write one client's update, its global weights and public metadata to ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {UPDATE + k: v.detach().cpu().contiguous() for k, v in update.items()}
    tensors.update({GLOBAL + k: v.detach().cpu().contiguous() for k, v in global_state.items()})
    meta = {"format": FORMAT, "share": share, "num_examples": str(int(num_examples))}
    if update_key is not None:
        meta["update_key"] = str(int(update_key))
    for k, v in dict(settings or {}).items():
        if k in CLIENT_SETTINGS:
            meta[k] = json.dumps(v)
    meta.update({k: str(v) for k, v in extra.items()})
    save_file(tensors, str(path), metadata=meta)
    return path


def is_capture(path: str | Path) -> bool:
    """Whether ``path`` is a capture file (a ``.safetensors`` file whose header names the format)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # not a readable safetensors file: the gradient loader says why
        return False


def read_capture(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any]]:
    """The update, the global weights and the metadata of a capture file (values decoded)."""
    from safetensors import safe_open

    path = regular_file(path, "capture file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # truncated or corrupted
        msg = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot read capture file {path}: {msg[:200]}") from None
    update = {k[len(UPDATE):]: v for k, v in tensors.items() if k.startswith(UPDATE)}
    weights = {k[len(GLOBAL):]: v for k, v in tensors.items() if k.startswith(GLOBAL)}
    other = [k for k in tensors if not k.startswith((UPDATE, GLOBAL))]
    if other:
        raise ValueError(f"capture file {path}: unexpected entries {other[:3]} (only update/... and global/...)")
    meta: dict[str, Any] = {}
    try:
        meta["share"] = raw.get("share", "delta")
        meta["num_examples"] = int(raw["num_examples"])
        if "update_key" in raw:
            meta["update_key"] = int(raw["update_key"])
        for k in CLIENT_SETTINGS:
            if k in raw:
                meta[k] = json.loads(raw[k])
    except (KeyError, ValueError) as err:
        raise ValueError(f"capture file {path}: bad metadata ({type(err).__name__}: {err})") from None
    _check_capture(update, weights, meta, f"capture file {path}")
    return update, weights, meta


def _check_capture(update: Mapping[str, Tensor], weights: Mapping[str, Tensor], meta: Mapping[str, Any],
                   source: str) -> None:
    """A capture's metadata checked on its own and against its tensors, so that no advice drawn from
    it (``set --data.batch_size N``) is one the data module then refuses."""
    from leakage.federated.fedavg import FedAvgClient

    n = meta["num_examples"]
    if n < 1:
        raise ValueError(f"{source}: bad metadata: num_examples {n} "
                         "(a client's update comes from at least one example)")
    if not update:
        raise ValueError(f"{source} holds no update/... tensors")
    for k in ("shuffle", "shuffle_seed"):
        kind = bool if k == "shuffle" else int
        if k in meta and (not isinstance(meta[k], kind) or (kind is int and isinstance(meta[k], bool))):
            wanted = "true or false" if kind is bool else "an integer"
            raise ValueError(f"{source}: bad metadata: {k} {json.dumps(meta[k])} is not {wanted}")
    try:  # the recorded client settings, checked as the data module checks its own, and against num_examples
        settings = {k: meta[k] for k in ("local_steps", "local_lr", "local_batch_size") if k in meta}
        FedAvgClient(share=meta["share"], **settings).mini_batch(n)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: bad metadata (num_examples {n}): {err}") from None
    for k, u in update.items():
        if k in weights and tuple(u.shape) != tuple(weights[k].shape):
            raise ValueError(f"{source}: update {k!r} has shape {tuple(u.shape)}, "
                             f"its global weight {tuple(weights[k].shape)}")
        if weights and k not in weights:
            raise ValueError(f"{source}: update {k!r} has no global weight of that name")


def load_global_weights(model: nn.Module, weights: Mapping[str, Tensor], source: str) -> None:
    """Set the model's weights (parameters and buffers) from a capture's global weights, after
    checking every ``state_dict`` name and shape; a mismatch is a one-line ``ValueError``."""
    state = model.state_dict()
    missing = [k for k in state if k not in weights]
    extra = [k for k in weights if k not in state]
    if missing or extra:
        raise ValueError(
            f"{source}: the global weights do not fit the model: missing {missing[:4] or 'nothing'}, "
            f"unexpected {extra[:4] or 'nothing'}"
        )
    for k, v in state.items():
        w = weights[k]
        if tuple(w.shape) != tuple(v.shape):
            raise ValueError(f"{source}: global weight {k!r} has shape {tuple(w.shape)}, the model needs {tuple(v.shape)}")
        if w.is_floating_point() and not bool(torch.isfinite(w).all()):
            raise ValueError(f"{source}: global weight {k!r} holds NaN or infinite values")
    with torch.no_grad():
        model.load_state_dict({k: weights[k].to(state[k].dtype) for k in state})


def check_settings(meta: Mapping[str, Any], wanted: Mapping[str, Any], source: str) -> None:
    """Refuse a capture whose recorded client settings differ from the attack's, naming the flags."""
    wrong = []
    for k, v in wanted.items():
        if k not in meta:
            continue
        got = meta[k]
        same = (got == v) if not (isinstance(got, float) or isinstance(v, float)) else (
            got is not None and v is not None and math.isclose(float(got), float(v), rel_tol=1e-6))
        if not same:
            wrong.append(f"--data.client.{k} {got if isinstance(got, str) else json.dumps(got)}")
    if wrong:
        raise ValueError(f"{source} was made by a client with other settings than the attack's: set {' '.join(wrong)}")
