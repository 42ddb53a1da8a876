"""Names of a sweep's cells and the files written under its output folder."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")


def fmt(value: Any) -> str:
    """A value as it appears in cell ids and tables: 0.01, 4, true, cifar10."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def cell_id(defense: str, value: float) -> str:
    """A defense cell: ``noise=0.01``."""
    return f"{defense}={value:.6g}"


def study_cell_id(study: dict, value: Any) -> str:
    """A study cell: ``cifar10.batch_size=4``."""
    return _UNSAFE.sub("_", f"{study['name']}.{study['key'].rsplit('.', 1)[-1]}={fmt(value)}")


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
