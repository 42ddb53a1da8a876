"""A table's schema: the public encoding of its records the attacker knows (TabLeak's): features,
their categories or statistics, the label and its classes; built from records (:meth:`TableSchema.infer`),
from JSON (checked), or read from a schema file. Encoding turns records into one-hot and standardised
rows, decoding turns rows back into values. Reading CSV files and columns is :mod:`leakage.data.csvtable`;
the kind that reconstructs such rows is :class:`leakage.data.kinds.tabular.TabularKind`."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from leakage.data.csvtable import FEW_VALUES, TYPO_SHARE, Column, parse_number, value_index
from leakage.engine.files import regular_file

#: a schema file larger than this is refused unread
SCHEMA_BYTES = 64 << 20


@dataclass
class Feature:
    """One column of the table as the attacker knows it."""

    name: str
    type: str  # "categorical" or "continuous"
    categories: list[str] = field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0
    min: float = 0.0
    max: float = 0.0
    integer: bool = False  # every value a whole number: decoded values are rounded
    #: categorical, standardised one-hot columns (TabLeak's encoding): each category's frequency and
    #: the standard deviation of its 0/1 column (``sqrt(p (1 - p))``, 1 when 0); empty: plain one-hot
    onehot_mean: list[float] = field(default_factory=list)
    onehot_std: list[float] = field(default_factory=list)

    @property
    def width(self) -> int:
        return len(self.categories) if self.type == "categorical" else 1


@dataclass
class TableSchema:
    """The public encoding of a table: features, their categories or statistics, and the label."""

    features: list[Feature]
    label: str
    classes: list[str]
    #: where the schema came from (a public reference table, a schema file, or the attacked table itself)
    origin: str = ""
    #: what inference read (one line; not stored)
    summary: str = field(default="", compare=False, repr=False)

    @property
    def width(self) -> int:
        return sum(f.width for f in self.features)

    @property
    def standardized_onehot(self) -> bool:
        """Whether the one-hot columns are standardised (TabLeak's encoding)."""
        return any(f.onehot_std for f in self.features)

    def column_stats(self) -> tuple[Tensor, Tensor]:
        """Per encoded column ``[D]``: the mean and standard deviation the one-hot columns are
        standardised with (0 and 1 for plain one-hot and for continuous columns, which are stored
        standardised already)."""
        mean, std = torch.zeros(self.width), torch.ones(self.width)
        for f, sl in self.blocks():
            if f.type == "categorical" and f.onehot_std:
                mean[sl] = torch.tensor(f.onehot_mean)
                std[sl] = torch.tensor(f.onehot_std)
        return mean, std

    def blocks(self) -> list[tuple[Feature, slice]]:
        out, start = [], 0
        for f in self.features:
            out.append((f, slice(start, start + f.width)))
            start += f.width
        return out

    # ------------------------------------------------------------ building
    @classmethod
    def infer(cls, header: Sequence[str], rows: Sequence[Sequence[str]], label: Optional[str] = None,
              categorical: Optional[Sequence[str]] = None, standardize_onehot: bool = False,
              continuous: Optional[Sequence[str]] = None, origin: str = "") -> "TableSchema":
        """The schema of complete records (no missing value; see :func:`leakage.data.csvtable.drop_nonfinite`): the label
        column (default: the last); a column is categorical when one of its values is not a number, or
        when it holds whole numbers only, at most :data:`leakage.data.csvtable.FEW_VALUES` distinct ones, each seen
        :data:`PER_VALUE` times on average (codes such as 1-4); otherwise continuous. ``categorical``
        and ``continuous`` name columns whose inferred type they override (they add to the inferred
        lists). A column of numbers with a few values that are not (at most :data:`TYPO_SHARE` of
        the records) is refused as a typo, unless named categorical. Numeric categories and classes
        are one per number (``1`` and ``1.0`` are the class ``1``), ordered by value; others sort as
        text. ``standardize_onehot``: the one-hot columns standardised by the records'
        frequencies (TabLeak's encoding). :attr:`summary` says what was inferred."""
        header = [h.strip() for h in header]
        label = header[-1] if label is None else label
        if label not in header:
            raise ValueError(f"no label column {label!r} in the table (columns: {', '.join(header)})")
        categorical, continuous = list(categorical or ()), list(continuous or ())
        for kind_, names in (("categorical", categorical), ("continuous", continuous)):
            for name in names:
                if name not in header:
                    raise ValueError(f"{kind_} column {name!r} is not in the table (columns: {', '.join(header)})")
                if name == label:
                    raise ValueError(f"{kind_} column {name!r} is the label column")
        both = sorted(set(categorical) & set(continuous))
        if both:
            raise ValueError(f"column {both[0]!r} is named both categorical and continuous")
        if not rows:
            raise ValueError("the table has no complete record to build a schema from")
        li = header.index(label)
        columns = list(zip(*rows))
        classes = Column(columns[li]).categories()
        if len(classes) < 2:
            raise ValueError(f"label column {label!r} holds {len(classes)} value(s); a classifier needs two or more")
        features, few = [], []
        for i, name in enumerate(header):
            if i == li:
                continue
            col = Column(columns[i])
            if name in continuous:
                as_cat = False
                if not col.numeric:
                    bad = col.first_text()
                    raise ValueError(f"column {name!r} is named continuous but holds {bad!r}, not a number")
            elif name in categorical:
                as_cat = True
            elif not col.numeric:
                share = col.text_share()
                if share <= TYPO_SHARE:
                    bad = col.first_text()
                    raise ValueError(
                        f"column {name!r} holds numbers but also {bad!r} ({100 * share:.2g}% of the records): "
                        "correct it, mark it missing ('?'), or name the column in --data.source.categorical_columns")
                as_cat = True
            else:
                as_cat = col.few_integers()
                if as_cat:
                    few.append(name)
            if as_cat:
                cats, counts = col.categories(counts=True)
                feat = Feature(name, "categorical", cats)
                if standardize_onehot:
                    freq = [c / len(rows) for c in counts]
                    feat.onehot_mean = freq
                    feat.onehot_std = [math.sqrt(p * (1 - p)) or 1.0 for p in freq]
                features.append(feat)
            else:
                t = col.values()
                if not np.isfinite(t).all():
                    raise ValueError(f"column {name!r} holds a number that is not finite: leave such records out "
                                     "(drop_nonfinite) before inferring the schema")
                std = float(t.std()) or 1.0
                features.append(Feature(name, "continuous", [], float(t.mean()), std, float(t.min()), float(t.max()),
                                        bool((t == np.round(t)).all())))
        if not features:
            raise ValueError("the table has no feature columns besides the label")
        schema = cls(features, label, classes, origin)
        n_cat = sum(f.type == "categorical" for f in features)
        line = (f"{len(rows)} records, label {label!r} ({len(classes)} classes), {n_cat} categorical and "
                f"{len(features) - n_cat} continuous columns")
        if few:
            line += (f"; read as categorical because they hold at most {FEW_VALUES} distinct whole numbers: "
                     f"{', '.join(few)} (--data.source.continuous_columns to read one as continuous)")
        schema.summary = line
        return schema

    def to_json(self) -> str:
        out = {"label": self.label, "classes": self.classes, "features": [asdict(f) for f in self.features]}
        if self.origin:
            out["origin"] = self.origin
        return json.dumps(out, indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "TableSchema":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: Any) -> "TableSchema":
        """A schema from its JSON form, checked: at least one feature, known types, distinct names,
        categories and classes; finite statistics, ``std > 0``, ``min <= max``; a standardised
        block's frequencies in [0, 1] and standard deviations > 0, one per category (``ValueError``)."""
        if not isinstance(data, dict):
            raise ValueError("a schema is a JSON object with label, classes and features")
        unknown = sorted(set(data) - {"label", "classes", "features", "origin"})
        if unknown:
            raise ValueError(f"unknown schema entry {unknown[0]!r} (known: label, classes, features, origin)")
        label, classes, feats = data.get("label"), data.get("classes"), data.get("features")
        if not isinstance(label, str) or not label:
            raise ValueError("the schema names no label column (label: a column name)")
        if not _strings(classes) or len(set(classes)) != len(classes) or len(classes) < 2:
            raise ValueError("the schema's classes must be two or more distinct strings")
        if not isinstance(feats, list) or not feats:
            raise ValueError("the schema has no features (features: a non-empty list)")
        known = {f.name for f in fields(Feature)}
        features, names = [], set()
        for n, f in enumerate(feats):
            if not isinstance(f, dict):
                raise ValueError(f"schema feature {n} is not an object")
            extra = sorted(set(f) - known)
            if extra:
                raise ValueError(f"schema feature {n}: unknown entry {extra[0]!r}")
            name = f.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"schema feature {n} has no name")
            if name in names or name == label:
                raise ValueError(f"schema feature {name!r} is named twice (or is the label)")
            names.add(name)
            if f.get("type") not in ("categorical", "continuous"):
                raise ValueError(f"schema feature {name!r}: type {f.get('type')!r} is neither categorical nor continuous")
            for key in ("mean", "std", "min", "max"):
                v = f.get(key, 0.0)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"schema feature {name!r}: {key} {v!r} is not a finite number")
            if not isinstance(f.get("integer", False), bool):
                raise ValueError(f"schema feature {name!r}: integer must be true or false")
            feat = Feature(**f)
            if feat.type == "continuous":
                if feat.std <= 0:
                    raise ValueError(f"schema feature {name!r}: std {feat.std!r} must be > 0")
                if feat.min > feat.max:
                    raise ValueError(f"schema feature {name!r}: min {feat.min!r} > max {feat.max!r}")
                if feat.categories or feat.onehot_mean or feat.onehot_std:
                    raise ValueError(f"schema feature {name!r} is continuous but lists categories")
            else:
                cats = feat.categories
                if not _strings(cats) or not cats or len(set(cats)) != len(cats):
                    raise ValueError(f"schema feature {name!r}: categories must be a non-empty list of distinct strings")
                mean, std = feat.onehot_mean, feat.onehot_std
                if mean or std:
                    if len(mean) != len(cats) or len(std) != len(cats):
                        raise ValueError(f"schema feature {name!r}: onehot_mean and onehot_std need one entry per category")
                    if not all(_finite(m) and 0 <= m <= 1 for m in mean) or not all(_finite(s) and s > 0 for s in std):
                        raise ValueError(f"schema feature {name!r}: onehot_mean must lie in [0, 1] and onehot_std be > 0")
            features.append(feat)
        origin = data.get("origin", "")
        return cls(features, label, list(classes), origin if isinstance(origin, str) else "")

    # ----------------------------------------------------------- encoding
    def encode(self, header: Sequence[str], rows: Sequence[Sequence[str]], source: str = "the table",
               numbers: Optional[Sequence[int]] = None) -> tuple[Tensor, Tensor]:
        """Encoded rows ``[N, D]`` and labels ``[N]``; a value the schema cannot encode is an error
        naming the record (``numbers``: the records' indices in the table, default 0 to N-1). A
        numeric category or class matches by number (``1.0`` is the category ``1``)."""
        header = [h.strip() for h in header]
        missing = [f.name for f in self.features if f.name not in header] + ([self.label] if self.label not in header else [])
        if missing:
            raise ValueError(f"{source} has no column {missing[0]!r} of the schema")
        cols = [header.index(f.name) for f in self.features]
        li = header.index(self.label)
        x = torch.zeros(len(rows), self.width)
        y = torch.zeros(len(rows), dtype=torch.long)
        numbers = list(range(len(rows))) if numbers is None else list(numbers)
        class_ix = value_index(self.classes)
        blocks = self.blocks()
        cat_ix = {f.name: value_index(f.categories) for f in self.features if f.type == "categorical"}
        for n, r in enumerate(rows):
            k = class_ix(r[li])
            if k is None:
                raise ValueError(f"{source}, record {numbers[n]}: label {r[li]!r} is not a class of the schema "
                                 f"({', '.join(self.classes)})")
            y[n] = k
            for (f, sl), c in zip(blocks, cols):
                v = r[c]
                if f.type == "categorical":
                    k = cat_ix[f.name](v)
                    if k is None:
                        raise ValueError(f"{source}, record {numbers[n]}: {f.name} {v!r} is not a category of the schema")
                    x[n, sl.start + k] = 1.0
                else:
                    num = parse_number(v)
                    if not math.isfinite(num):
                        raise ValueError(f"{source}, record {numbers[n]}: {f.name} {v!r} is not a finite number")
                    x[n, sl.start] = (num - f.mean) / f.std
        mean, std = self.column_stats()
        return (x - mean) / std if self.standardized_onehot else x, y

    def decode(self, x: Tensor) -> list[list[Any]]:
        """Rows ``[N, D]`` (encoded or relaxed) as values: argmax categories, de-standardised
        continuous values clamped to the feature's bounds."""
        out = []
        mean, std = self.column_stats()  # standardised one-hot columns back to 0/1 (identity for plain ones)
        for row in x.detach().cpu().double() * std.double() + mean.double():
            vals: list[Any] = []
            for f, sl in self.blocks():
                if f.type == "categorical":
                    vals.append(f.categories[int(row[sl].argmax())])
                else:
                    value = min(max(float(row[sl.start]) * f.std + f.mean, f.min), f.max)
                    vals.append(round(value) if f.integer else value)
            out.append(vals)
        return out


def _strings(items: Any) -> bool:
    return isinstance(items, list) and all(isinstance(i, str) for i in items)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_schema(path: str | Path) -> TableSchema:
    """A table's schema from a JSON file: a run's ``schema.json`` (its ``schema`` entry) or the schema
    itself; checked as every input file is (a regular file, at most :data:`SCHEMA_BYTES`) and by
    :meth:`TableSchema.from_dict`; one line when it cannot be used."""
    path = regular_file(path, "schema file")
    try:
        with open(path, "rb") as f:
            raw = f.read(SCHEMA_BYTES + 1)
        if len(raw) > SCHEMA_BYTES:
            raise ValueError(f"larger than {SCHEMA_BYTES:,} bytes")
        data = json.loads(raw.decode("utf-8-sig"))
        if isinstance(data, dict) and isinstance(data.get("schema"), dict):
            data = data["schema"]
        return TableSchema.from_dict(data)
    except (OSError, ValueError, RecursionError) as err:
        text = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"cannot read the table schema {path}: {text}") from None
