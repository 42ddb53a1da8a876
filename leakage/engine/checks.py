"""Range checks of settings, shared by the CLI, the sweep and the Python API (one message each)."""

from __future__ import annotations

import math

import torch

#: the largest finite float32: settings that become float32 tensors must not overflow to inf
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
#: seeds are stored as int64 (torch generators take up to 2**64 - 1, but a seed must fit every consumer)
SEED_LIMIT = 2**63


def float32_number(name: str, value: float) -> None:
    """Refuse a float setting that is not finite in float32 (nan, inf, or beyond +-3.4e38)."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if abs(value) > FLOAT32_MAX:
        raise ValueError(f"{name} must fit in float32 (|{name}| <= {FLOAT32_MAX:.4g}), got {value:g}")


def unit_interval(name: str, value: float) -> None:
    """Refuse a value outside [0, 1] (an SSIM threshold, a fraction)."""
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def seed(name: str, value: int) -> None:
    """Refuse a seed that is not an integer in [0, 2**63)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**63), got {value!r}")


def is_seed_key(key: str) -> bool:
    """Whether a dotted setting name names a seed (``model.model_seed``, ``...init_args.seed``)."""
    last = key.rsplit(".", 1)[-1]
    return last == "seed" or last.endswith("_seed")
