"""Reading sweep configs and checking their ``sweep`` section: settings, defenses and studies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .paths import fmt, study_cell_id

SWEEP_DEFAULTS = {"output": "logs/defense_sweep", "success_ssim": 0.6, "target_success": 0.1, "refine": 3}
STUDY_FIELDS = ("name", "key", "values", "set", "per_value", "label")


def read_configs(paths: list[str]) -> tuple[dict, Any]:
    """The fit config (merged section by section, in order) and the ``sweep`` section of ``paths``."""
    base: dict = {}
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"sweep config not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        for k, v in data.items():
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


def check_defense(d: dict) -> dict:
    for key in ("name", "class_path", "param", "values"):
        if key not in d:
            raise ValueError(f"sweep defense entry {d.get('name', d)!r} needs '{key}'")
    if not d["values"]:
        raise ValueError(f"sweep defense {d['name']!r} has no values")
    stronger = d.get("stronger", "larger")
    if stronger not in ("larger", "smaller"):
        raise ValueError(f"sweep defense {d['name']!r}: stronger must be 'larger' or 'smaller', got {stronger!r}")
    return {**d, "stronger": stronger, "init_args": dict(d.get("init_args") or {}),
            "values": sorted({float(v) for v in d["values"]}, reverse=stronger == "smaller")}


def check_study(s: Any) -> dict:
    if not isinstance(s, dict):
        raise ValueError(f"a sweep study must be a mapping with name, key and values, got {s!r}")
    for field in ("name", "key", "values"):
        if field not in s:
            raise ValueError(f"sweep study entry {s.get('name', s)!r} needs '{field}'")
    name = str(s["name"])
    where = f"sweep study {name!r}"
    unknown = sorted(set(s) - set(STUDY_FIELDS))
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
    cells = [study_cell_id(study, v) for v in study["values"]]
    if len(set(cells)) != len(cells):
        raise ValueError(f"{where}: values must be distinct, got {study['values']}")
    return study


def defense_class(class_path: str):
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"unknown defense class {class_path!r}") from None


def check_sweep(sweep: dict, overrides: list[str]) -> tuple[dict, list[dict], list[dict]]:
    """The sweep settings (defaults filled in), its defenses and its studies, checked."""
    cfg = {**SWEEP_DEFAULTS, **sweep}
    defenses, studies = cfg.get("defenses") or [], cfg.get("studies") or []
    if not isinstance(defenses, list) or not isinstance(studies, list) or not (defenses or studies):
        raise ValueError("the sweep section needs a list of defenses or a list of studies (or both)")
    if not 0 <= float(cfg["target_success"]) < 1:
        raise ValueError(f"sweep target_success must be in [0, 1), got {cfg['target_success']}")
    defenses = [check_defense(d) for d in defenses]
    for d in defenses:
        defense_class(d["class_path"])
    studies = [check_study(s) for s in studies]
    names = [d["name"] for d in defenses] + [s["name"] for s in studies]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep defense and study names must be unique, got {names}")
    for s in studies:
        for o in overrides:
            if o == f"--{s['key']}" or o.startswith(f"--{s['key']}="):
                raise ValueError(f"the fit option {o.split('=')[0]} would override the key that study "
                                 f"{s['name']!r} sweeps")
    return cfg, defenses, studies
