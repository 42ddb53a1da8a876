"""Names of a sweep's cells and the files written under its output folder.

Defense and study names are checked by :func:`check_name` (refused, never rewritten); cell ids are
built from those names and the cell's value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

#: what a defense or study name may be (it names files: ``runs/<name>=<value>``, ``<name>.png``)
NAME_RULE = "letters, digits, '_' and '-' only, starting with a letter or digit, at most 64 characters"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")


def check_name(name: Any, what: str) -> str:
    """``name`` if it may name files under the sweep output, else a one-line error."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not allowed: a name uses {NAME_RULE} (it names files under "
                         "the sweep output)")
    return name


def fmt(value: Any) -> str:
    """A value as it appears in cell ids and tables: 0.01, 4, true, cifar10."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def cell_id(defense: str, value: float) -> str:
    """A defense cell: ``noise=0.01`` (``defense`` is a checked name)."""
    return f"{defense}={value:.6g}"


def study_cell_id(study: dict, value: Any) -> str:
    """A study cell: ``cifar10.batch_size=4`` (the study's name is checked; the key's last part and
    the value are made safe: any other character becomes '_')."""
    return _UNSAFE.sub("_", f"{study['name']}.{study['key'].rsplit('.', 1)[-1]}={fmt(value)}")


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
