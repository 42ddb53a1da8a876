"""What a config may import: the trainer section's class paths are checked before any is imported.

jsonargparse imports every class path it reads, and a module's import-time code runs then, even
when the class is refused afterwards (not a Callback, not a Logger). The model slot imports the
user's own model by design; the trainer section (callbacks, logger, strategy, profiler, plugins)
takes classes of the package, Lightning and torch only. :func:`check_trainer_class_paths` reads
the command line and its config files as text, before the parser, and refuses a dotted path there
whose top-level module is importable and not one of those (a dotted string that names no
importable module, such as a file name, is left alone).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

#: top-level modules whose classes the trainer section may name (short names, such as
#: ``EarlyStopping``, resolve among classes already imported and are allowed too)
ALLOWED = ("leakage", "lightning", "pytorch_lightning", "torch")

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_MAX_DEPTH = 8  # sub-config files naming sub-config files


def _refuse(key: str, path: str) -> None:
    raise ValueError(
        f"{key}: {path!r} is not a class of the package, Lightning or torch: trainer class paths (callbacks, "
        f"logger, strategy, ...) must be under {', '.join(a + '.' for a in ALLOWED)} (only --model.model "
        "imports user code; docs/own-model.md: What a config may run)"
    )


def _check_path(key: str, path: str) -> None:
    top = path.split(".", 1)[0]
    if top in ALLOWED:
        return
    try:
        found = importlib.util.find_spec(top) is not None  # a top-level name: nothing is imported
    except (ImportError, ValueError):
        found = False
    if found:
        _refuse(key, path)


def _load(text: str, base: Optional[Path]) -> tuple[Any, Optional[Path]]:
    """A value as jsonargparse reads it: a file's YAML, inline YAML, or the string itself."""
    path = Path(text) if base is None or Path(text).is_absolute() else base / text
    try:
        if path.is_file():
            return yaml.safe_load(path.read_text()), path.parent
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError):
        return None, base  # the parser says what is wrong with it
    try:
        return yaml.safe_load(text), base
    except yaml.YAMLError:
        return text, base


def _walk(key: str, value: Any, base: Optional[Path], depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, str):
        loaded, where = _load(value, base)  # a sub-config file (cb.yaml), inline YAML, or the string
        if isinstance(loaded, (dict, list)):
            _walk(key, loaded, where, depth + 1)
        elif isinstance(loaded, str) and _DOTTED.match(loaded.strip()):
            _check_path(key, loaded.strip())
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk(f"{key}.{k}", v, base, depth)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk(f"{key}[{i}]", v, base, depth)


def _options(args: list[str]) -> Iterable[tuple[str, str]]:
    """(option, value) of every ``--trainer...`` option, given as ``--opt value`` or ``--opt=value``."""
    for i, a in enumerate(args):
        name, eq, value = a.partition("=")
        if name != "--trainer" and not name.startswith("--trainer."):
            continue
        if eq:
            yield name.rstrip("+"), value
        elif i + 1 < len(args):
            yield name.rstrip("+"), args[i + 1]


def check_trainer_class_paths(args: list[str], configs: Iterable[str]) -> None:
    """Refuse a class path in the trainer section of the command line ``args`` or of the
    ``--config`` values ``configs`` (files or inline YAML) outside :data:`ALLOWED`, naming the setting."""
    for config in configs:
        data, base = _load(config, None)
        if isinstance(data, dict):
            for section in (data, data.get("fit") if isinstance(data.get("fit"), dict) else {}):
                if "trainer" in section:
                    _walk("trainer", section["trainer"], base)
    for option, value in _options(args):
        _walk(option.lstrip("-"), value, None)
