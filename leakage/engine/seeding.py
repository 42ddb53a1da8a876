"""Seeds that depend only on what they are for.

Every random draw of a problem (its dummy init, its soft-label init, a defense's noise on its update)
comes from a generator seeded by the problem's own identity: the user's seed, the update's key and
the restart. A result therefore never depends on what else shares the run, its order, its chunking
or the number of processes.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any sequence of ints and strings, stable across runs, processes and
    platforms (SHA-256 of their text, not Python's salted ``hash``)."""
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def update_key(indices: Sequence[int]) -> int:
    """The key of a client update made of the images with these dataset indices (in batch order)."""
    return derive_seed("images", *(int(i) for i in indices))


def position_key(position: int) -> int:
    """The key of the update at this position of a captured gradient file."""
    return derive_seed("update", int(position))


def group_key(keys: Sequence[int]) -> int:
    """The key of an aggregate of several updates (secure aggregation), from theirs, in order."""
    return derive_seed("aggregate", *(int(k) for k in keys))


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
