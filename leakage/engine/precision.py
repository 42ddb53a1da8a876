"""Full float32 precision for the client and the attack.

Gradient matching compares gradients that agree to float32 rounding, and its second-order objective
amplifies every error. Reduced-precision float32 modes break it silently: cuDNN uses TF32 for
convolutions by default (``torch.backends.cudnn.allow_tf32 = True``) and picks such kernels for large
batches; measured on an H100, ``configs/cifar_fast.yaml`` with 100 problems went from 20/20
reconstructions to 0/20. :func:`full_precision` turns every such mode off (TF32 matmuls and
convolutions on CUDA, bf16/TF32 float32 math in oneDNN on CPUs) for the code inside it and restores
the user's settings afterwards, whatever happens inside.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

#: torch >= 2.9: per-backend ``fp32_precision`` ("ieee" is full float32; "none" inherits)
_BACKENDS = (
    ("torch.backends", lambda: torch.backends),
    ("torch.backends.cuda.matmul", lambda: torch.backends.cuda.matmul),
    ("torch.backends.cudnn", lambda: torch.backends.cudnn),
    ("torch.backends.cudnn.conv", lambda: torch.backends.cudnn.conv),
    ("torch.backends.cudnn.rnn", lambda: torch.backends.cudnn.rnn),
    ("torch.backends.mkldnn", lambda: torch.backends.mkldnn),
    ("torch.backends.mkldnn.matmul", lambda: torch.backends.mkldnn.matmul),
    ("torch.backends.mkldnn.conv", lambda: torch.backends.mkldnn.conv),
    ("torch.backends.mkldnn.rnn", lambda: torch.backends.mkldnn.rnn),
)


def _fp32_backends() -> list[tuple[str, object]]:
    out = []
    for name, get in _BACKENDS:
        try:
            obj = get()
        except AttributeError:
            continue
        if isinstance(getattr(obj, "fp32_precision", None), str):
            out.append((name, obj))
    return out


def precision_flags() -> dict[str, object]:
    """The current float32 precision settings, by name (what :func:`full_precision` changes).

    With the per-backend API (torch >= 2.9) only its settings are read: torch refuses to report the
    legacy flags once the new API has set them.
    """
    backends = _fp32_backends()
    if backends:
        return {f"{name}.fp32_precision": obj.fp32_precision for name, obj in backends}
    return {
        "torch.backends.cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "torch.backends.cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def is_full_precision() -> bool:
    """Whether every float32 matmul, convolution and RNN runs in full precision now: each one's
    setting (or, where it inherits with "none", its backend's or the global one) is "ieee"."""
    f = precision_flags()
    if "torch.backends.fp32_precision" not in f:
        return (not f["torch.backends.cuda.matmul.allow_tf32"] and not f["torch.backends.cudnn.allow_tf32"]
                and f["float32_matmul_precision"] == "highest")

    def resolved(name: str) -> object:
        for key in (name, name.rsplit(".", 1)[0], "torch.backends"):
            value = f.get(f"{key}.fp32_precision", "none")
            if value != "none":
                return value
        return "none"

    leaves = [k[: -len(".fp32_precision")] for k in f if k.count(".") >= 4]  # torch.backends.X.Y.fp32_precision
    return all(resolved(leaf) == "ieee" for leaf in leaves)


@contextmanager
def full_precision() -> Iterator[None]:
    """Run the block with every reduced-precision float32 mode off; restore the settings after."""
    backends = _fp32_backends()
    if backends:  # the per-backend API; the legacy flags are views of it
        saved = [(obj, obj.fp32_precision) for _, obj in backends]
        try:
            for obj, _ in saved:
                obj.fp32_precision = "ieee"
            yield
        finally:
            for obj, value in reversed(saved):
                obj.fp32_precision = value
        return
    saved_legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                    torch.get_float32_matmul_precision())
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_legacy[:2]
        torch.set_float32_matmul_precision(saved_legacy[2])


#: ``--trainer.precision`` values the attack runs under: full float32 (the default) or float64
FULL_PRECISIONS = ("32", "32-true", "64", "64-true")


def check_precision(precision: object) -> None:
    """Refuse a Lightning precision other than full float32 or float64 (mixed, half, bf16, fp8).

    Lightning's autocast and half-precision plugins are outside :func:`full_precision`: under them
    the matching objective runs in reduced precision and the attack fails silently (or, for
    ``bf16-true``, in a kernel that has no bfloat16 version)."""
    if precision is None or str(precision) in FULL_PRECISIONS:
        return
    raise ValueError(
        f"precision {precision} is not supported: gradient matching needs full float32 (its second-order "
        "objective amplifies every rounding error, and reduced precision fails silently); use "
        "--trainer.precision 32 (the default) or 64"
    )
