"""Kinds of data behind the one engine: :class:`ImageKind`, :class:`TabularKind`, :class:`TextKind` (see :mod:`.base`)."""

from leakage.data.kinds.base import DataKind
from leakage.data.kinds.image import ImageKind
from leakage.data.kinds.tabular import TabularKind
from leakage.data.kinds.text import TextKind

#: every kind by its ``name`` (what results record): summaries of stored results read a kind's
#: class attributes (score, metrics, their names) from here
KINDS: dict[str, type[DataKind]] = {k.name: k for k in (ImageKind, TabularKind, TextKind)}


def kind_class(name: str) -> type[DataKind]:
    """The kind named ``name`` in a stored result."""
    if name not in KINDS:
        raise ValueError(f"unknown data kind {name!r}; the kinds are {', '.join(KINDS)}")
    return KINDS[name]


__all__ = ["DataKind", "ImageKind", "KINDS", "TabularKind", "TextKind", "kind_class"]
