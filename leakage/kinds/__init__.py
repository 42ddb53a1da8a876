"""Kinds of data behind the one engine: :class:`ImageKind`, :class:`TabularKind` (see :mod:`.base`)."""

from .base import DataKind
from .image import ImageKind
from .tabular import TableSchema, TabularKind

__all__ = ["DataKind", "ImageKind", "TableSchema", "TabularKind"]
