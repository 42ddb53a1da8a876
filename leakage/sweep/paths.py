"""Names of a sweep's cells and the files written under its output folder.

Every path the sweep writes or deletes is built by :func:`confined` from names checked here:
defense and study names by :func:`check_name` (refused, never rewritten), cell ids from those
names and the cell's value. A path that would leave the output folder is an error.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any


#: what a defense or study name may be (it names files: ``runs/<name>=<value>``, ``<name>.png``)
NAME_RULE = "letters, digits, '_' and '-' only, starting with a letter or digit, at most 64 characters"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: one file or folder name under the output: a checked name, '.', '=', '+' (cell ids, suffixes)
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")
#: two numbers of one grid closer than this, relative (``|a - b| <= RESOLUTION * max(|a|, |b|)``),
#: are one setting: refused as duplicates, and where a breaking point's bisection stops
RESOLUTION = 1e-6


def check_name(name: Any, what: str) -> str:
    """``name`` if it may name files under the sweep output, else a one-line error."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not allowed: a name uses {NAME_RULE} (it names files under "
                         "the sweep output)")
    return name


def fmt(value: Any) -> str:
    """A value as it appears in cell ids and tables: 0.01, 4, true, cifar10. A float is its shortest
    text that reads back as the same float (Python's ``repr``; a whole number without ``.0``), so
    distinct floats always have distinct names, at any refine depth."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    return str(value)


def same_setting(a: float, b: float) -> bool:
    """Whether two numbers are one setting of a grid (closer than :data:`RESOLUTION`, relative)."""
    return math.isclose(a, b, rel_tol=RESOLUTION, abs_tol=0.0)


def cell_id(defense: str, value: float) -> str:
    """A defense cell: ``noise=0.01`` (``defense`` is a checked name)."""
    return f"{defense}={fmt(float(value))}"


def study_cell_id(study: dict, value: Any) -> str:
    """A study cell: ``cifar10.batch_size=4`` (the study's name is checked; the key's last part and
    the value are made safe: any other character becomes '_')."""
    return _UNSAFE.sub("_", f"{study['name']}.{study['key'].rsplit('.', 1)[-1]}={fmt(value)}")


def confined(out: Path, *parts: str) -> Path:
    """``out/part/...``, each part one plain file name, and the result inside ``out`` once links are
    resolved: the only way the sweep builds a path it writes or deletes."""
    for part in parts:
        if not isinstance(part, str) or not _PART.fullmatch(part):
            raise ValueError(f"refusing to write {part!r} under the sweep output {out}: not a plain file name")
    path = out.joinpath(*parts)
    root = out.resolve()
    if not path.resolve().is_relative_to(root):
        raise ValueError(f"refusing to write {path}: it resolves to {path.resolve()}, outside the sweep output {root}")
    return path

