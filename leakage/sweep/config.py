"""Reading sweep configs and checking their ``sweep`` section: settings, defenses and studies.

Configs are data: every key is known, every number is a finite number in its range, every name may
name a file, and a defense's class is one of the package's defenses, resolved without importing
anything outside the ``leakage`` package.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from pathlib import Path
from typing import Any

import yaml

from leakage.engine import checks
from leakage.sweep.paths import RESOLUTION, check_name, fmt, same_setting, study_cell_id

SWEEP_DEFAULTS = {"output": "logs/defense_sweep", "success_ssim": 0.6, "target_success": 0.1, "refine": 3,
                  "batch": True}
#: the keys of the ``sweep`` section, of a defense entry and of a study entry
SWEEP_KEYS = (*SWEEP_DEFAULTS, "defenses", "studies")
DEFENSE_FIELDS = ("name", "class_path", "param", "values", "stronger", "init_args")
STUDY_FIELDS = ("name", "key", "values", "set", "per_value", "label")
#: sections of a sweep config that must be mappings when present
SECTIONS = ("trainer", "model", "data", "report", "sweep")
_DOTTED = re.compile(r"leakage(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _reason(err: BaseException) -> str:
    """The first line of why a file could not be read (a YAML error's problem and where it is)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        return err.problem + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else "")
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def read_configs(paths: list[str]) -> tuple[dict, Any]:
    """The fit config (merged section by section, in order) and the ``sweep`` section of ``paths``."""
    base: dict = {}
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"sweep config not found: {p}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ValueError(f"cannot read sweep config {p}: {_reason(err)}") from None
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ValueError(f"cannot read sweep config {p}: the top level must be a mapping of sections "
                             f"({', '.join(SECTIONS)}, ...), got {_short(data)}")
        for k, v in data.items():
            if k in SECTIONS and v is not None and not isinstance(v, dict):
                raise ValueError(f"cannot read sweep config {p}: section {k!r} must be a mapping, got {_short(v)}")
            base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base, base.pop("sweep", None)


def set_key(cfg: dict, dotted: str, value: Any) -> None:
    """``cfg[a][b][c] = value`` for ``a.b.c``, creating the sections on the way."""
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {dotted!r}: {'.'.join(parts[:i + 1])!r} is {node!r}, not a section")
    node[parts[-1]] = value


def _check_keys(entry: dict, allowed: tuple[str, ...], unknown_key: str) -> None:
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        raise ValueError(f"{unknown_key} {unknown[0]!r}; allowed: {', '.join(allowed)}")


def _name(value: Any, what: str) -> str:
    """A checked defense or study name (a YAML number such as 2024 is read as its text)."""
    return check_name(str(value) if isinstance(value, int) and not isinstance(value, bool) else value, what)


def _number(value: Any, what: str) -> float:
    """A finite number (a numeric string too: YAML reads ``1e-3`` as text)."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        x = float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{what} must be a number, got {_short(value)}") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} must be a finite number, got {_short(value)}")
    return x


def _distinct(values: list[Any], where: str) -> None:
    """Refuse two numbers of one grid that are one setting (equal, or closer than RESOLUTION, relative)."""
    numbers = sorted(float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
    for a, b in zip(numbers, numbers[1:]):
        if same_setting(a, b):
            raise ValueError(f"{where}: values {fmt(a)} and {fmt(b)} are one setting (closer than {RESOLUTION:g}, "
                             "relative): give each value once")


def _check_dotted(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
        raise ValueError(f"{where}: a config key must be a dotted path like data.batch_size, got {key!r}")
    if key.split(".")[0] == "sweep":
        raise ValueError(f"{where}: {key!r} is a sweep setting, not a fit config key")
    return key


def _check_settings(settings: Any, where: str) -> dict:
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ValueError(f"{where} must map dotted config keys to values, got {settings!r}")
    for k in settings:
        _check_dotted(k, where)
    return dict(settings)


# ----------------------------------------------------------------------------- defense classes
def defense_classes() -> dict[str, type]:
    """The defenses a sweep may use, by short name: the subclasses of
    :class:`leakage.federated.defenses.Defense` that :mod:`leakage.federated.defenses` lists."""
    from leakage.federated import defenses
    return {name: obj for name, obj in sorted(vars(defenses).items())
            if isinstance(obj, type) and issubclass(obj, defenses.Defense) and obj is not defenses.Defense}


def _allowed() -> str:
    return ", ".join(defense_classes()) + " (or leakage.federated.defenses.<Name>)"


def defense_class(class_path: Any) -> type:
    """The defense class that ``class_path`` names: a short name from :func:`defense_classes` or a
    dotted path inside the ``leakage`` package to a subclass of ``Defense``. Nothing outside the
    package is imported."""
    from leakage.federated.defenses import Defense

    known = defense_classes()
    if isinstance(class_path, str) and class_path in known:
        return known[class_path]
    cls = None
    if isinstance(class_path, str) and _DOTTED.fullmatch(class_path):
        module, _, name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name, None)  # a module of this package only
        except Exception:  # not a module of the package (or one whose optional extra is missing)
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, Defense) and cls is not Defense):
        raise ValueError(f"unknown defense class {_short(class_path)}: a sweep defense is one of the package's "
                         f"defenses: {_allowed()}")
    return cls


def _arguments(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    """A class's keyword arguments, and whether it takes ``**kwargs``."""
    params = inspect.signature(cls).parameters
    named = {n: p for n, p in params.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def check_defense(d: Any) -> dict:
    """A defense entry, checked: its class (by its full path), strength values weakest first."""
    if not isinstance(d, dict):
        raise ValueError(f"a sweep defense must be a mapping with name, class_path, param and values, got {_short(d)}")
    for key in ("name", "class_path", "param", "values"):
        if key not in d:
            raise ValueError(f"sweep defense entry {d.get('name', d)!r} needs '{key}'")
    name = _name(d["name"], "sweep defense name")
    where = f"sweep defense {name!r}"
    _check_keys(d, DEFENSE_FIELDS, f"{where}: unknown key")
    cls = defense_class(d["class_path"])
    args, any_kwargs = _arguments(cls)
    listed = ", ".join(args) or "none"
    param = d["param"]
    if not isinstance(param, str) or (param not in args and not any_kwargs):
        raise ValueError(f"{where}: param {_short(param)} is not an argument of {cls.__name__}; its arguments: {listed}")
    init_args = d.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise ValueError(f"{where}: init_args must map {cls.__name__}'s arguments to values, got {_short(init_args)}")
    for k in init_args:
        if not isinstance(k, str) or (k not in args and not any_kwargs):
            raise ValueError(f"{where}: {cls.__name__} has no argument {k!r}; its arguments: {listed}")
    if param in init_args:
        raise ValueError(f"{where}: init_args sets {param!r}, the param the sweep varies; leave it to values")
    missing = [n for n, p in args.items() if p.default is inspect.Parameter.empty and n != param and n not in init_args]
    if missing:
        raise ValueError(f"{where}: {cls.__name__} needs {', '.join(missing)} in init_args")
    stronger = d.get("stronger", "larger")
    if stronger not in ("larger", "smaller"):
        raise ValueError(f"{where}: stronger must be 'larger' or 'smaller', got {stronger!r}")
    values = d["values"]
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where} has no values: values must be a non-empty list of numbers")
    values = [_number(v, f"{where}: each of values") for v in values]
    _distinct(values, where)
    return {**d, "name": name, "class_path": f"{cls.__module__}.{cls.__qualname__}", "stronger": stronger,
            "init_args": dict(init_args), "values": sorted(values, reverse=stronger == "smaller")}


def check_study(s: Any) -> dict:
    if not isinstance(s, dict):
        raise ValueError(f"a sweep study must be a mapping with name, key and values, got {s!r}")
    for field in ("name", "key", "values"):
        if field not in s:
            raise ValueError(f"sweep study entry {s.get('name', s)!r} needs '{field}'")
    name = _name(s["name"], "sweep study name")
    where = f"sweep study {name!r}"
    unknown = [k for k in s if k not in STUDY_FIELDS]
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; a study has {', '.join(STUDY_FIELDS)}")
    if not isinstance(s["values"], list) or not s["values"]:
        raise ValueError(f"{where}: values must be a non-empty list, got {s['values']!r}")
    study = {"name": name, "key": _check_dotted(s["key"], where), "values": list(s["values"]),
             "set": _check_settings(s.get("set"), f"{where}: set")}
    leaf = study["key"].rsplit(".", 1)[-1]
    study["label"] = str(s.get("label") or ("B" if leaf == "batch_size" else study["key"]))
    per_value = s.get("per_value") or {}
    if not isinstance(per_value, dict):
        raise ValueError(f"{where}: per_value must map values to settings, got {per_value!r}")
    study["per_value"] = []  # [(value, settings)], matched by value or by its text
    for v, settings in per_value.items():
        if not any(v == x or fmt(v) == fmt(x) for x in study["values"]):
            raise ValueError(f"{where}: per_value {v!r} is not one of its values {study['values']}")
        study["per_value"].append((v, _check_settings(settings, f"{where}: per_value {v!r}")))
    _distinct(study["values"], where)
    cells = [study_cell_id(study, v).lower() for v in study["values"]]  # file names: case-insensitive disks too
    if len(set(cells)) != len(cells):
        raise ValueError(f"{where}: values must be distinct (as file names, ignoring case), got {study['values']}")
    return study


# ----------------------------------------------------------------------------- the section
def check_sweep(sweep: Any, overrides: list[str]) -> tuple[dict, list[dict], list[dict]]:
    """The sweep settings (defaults filled in), its defenses and its studies, checked."""
    if not isinstance(sweep, dict):
        raise ValueError(f"the sweep section must be a mapping, got {_short(sweep)}")
    _check_keys(sweep, SWEEP_KEYS, "unknown sweep key")
    cfg = {**SWEEP_DEFAULTS, **sweep}
    if not isinstance(cfg["output"], str) or not cfg["output"].strip():
        raise ValueError(f"sweep output must be a folder name, got {_short(cfg['output'])}")
    cfg["success_ssim"] = _number(cfg["success_ssim"], "sweep success_ssim")
    checks.unit_interval("sweep success_ssim", cfg["success_ssim"])
    cfg["target_success"] = _number(cfg["target_success"], "sweep target_success")
    if not 0 <= cfg["target_success"] < 1:
        raise ValueError(f"sweep target_success must be in [0, 1), got {cfg['target_success']}")
    if isinstance(cfg["refine"], bool) or not isinstance(cfg["refine"], int) or cfg["refine"] < 0:
        raise ValueError(f"sweep refine must be a whole number >= 0, got {_short(cfg['refine'])}")
    if not isinstance(cfg["batch"], bool):
        raise ValueError(f"sweep batch must be true or false, got {_short(cfg['batch'])}")
    defenses, studies = cfg.get("defenses") or [], cfg.get("studies") or []
    if not isinstance(defenses, list) or not isinstance(studies, list) or not (defenses or studies):
        raise ValueError("the sweep section needs a list of defenses or a list of studies (or both)")
    defenses = [check_defense(d) for d in defenses]
    studies = [check_study(s) for s in studies]
    names = [d["name"] for d in defenses] + [s["name"] for s in studies]
    if len({n.lower() for n in names}) != len(names):
        raise ValueError(f"sweep defense and study names must be unique (ignoring case: they name files), got {names}")
    for s in studies:
        for o in overrides:
            if o == f"--{s['key']}" or o.startswith(f"--{s['key']}="):
                raise ValueError(f"the fit option {o.split('=')[0]} would override the key that study "
                                 f"{s['name']!r} sweeps")
    return cfg, defenses, studies
