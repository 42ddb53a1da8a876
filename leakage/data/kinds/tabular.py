"""Tables: records of categorical and continuous features, one-hot and standardised (TabLeak's
encoding, the public schema the attacker knows).

The dummy is ``[B, D]`` encoded rows. With ``relax`` (TabLeak) the dummy holds free parameters: a
softmax over each categorical feature's one-hot block, and each continuous value squashed into its
standardised bounds by a sigmoid; without it (the Inverting Gradients and DLG baselines) the dummy
is the encoded row itself. With ``standardize_onehot`` (TabLeak's own encoding) the one-hot columns
are standardised too, ``(onehot - frequency) / std``, as TabLeak's model sees them. Decoding takes
the argmax category (of the de-standardised block) and de-standardises the continuous
values (clamped to their bounds); rows are matched to the truth by the Hungarian algorithm on
TabLeak's error, and scored by TabLeak's accuracy: a categorical value is right when exact, a
continuous one when within ``0.319`` times the feature's standard deviation.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from leakage.engine.files import regular_file
from leakage.data.kinds.base import DataKind, hungarian

#: TabLeak's tolerance of a continuous value, in standard deviations of the feature
TOLERANCE = 0.319
MISSING = ("", "?")


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
        """The schema of complete records (no missing value; see :func:`drop_nonfinite`): the label
        column (default: the last); a column is categorical when one of its values is not a number, or
        when it holds whole numbers only, at most :data:`FEW_VALUES` distinct ones, each seen
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
        classes = _Column(columns[li]).categories()
        if len(classes) < 2:
            raise ValueError(f"label column {label!r} holds {len(classes)} value(s); a classifier needs two or more")
        features, few = [], []
        for i, name in enumerate(header):
            if i == li:
                continue
            col = _Column(columns[i])
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
        class_ix = _index(self.classes)
        blocks = self.blocks()
        cat_ix = {f.name: _index(f.categories) for f in self.features if f.type == "categorical"}
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
                    num = _parse(v)
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


#: what the entropy of a reconstructed cell means, where a report shows it
ENTROPY_NOTE = ("entropy of the pooled restarts (TabLeak's, two scales): categorical H over log(categories), "
                "0 certain to 1 uniform; continuous H the Gaussian differential entropy of the restarts' spread "
                "in nats (standardised units; negative when they agree within 0.24 standard deviations; "
                "empty with one restart)")


def entropy_text(value: float) -> str:
    """An entropy as the reports print it: three decimals, never ``-0.000``; empty when there is none
    (NaN: one restart, nothing to spread)."""
    if not math.isfinite(value):
        return ""
    text = f"{value:.3f}"
    return "0.000" if float(text) == 0 else text


#: a column of whole numbers with at most this many distinct values ...
FEW_VALUES = 10
#: ... each seen this many times on average is read as categorical (codes such as 1-4)
PER_VALUE = 5
#: a numeric column whose values are not numbers on at most this share of the records is a typo
TYPO_SHARE = 0.05
#: a schema file larger than this is refused unread
SCHEMA_BYTES = 64 << 20


def _parse(value: str) -> float:
    """``value`` as a number (NaN when it is not one; ``inf``, ``nan`` and overflowing ones such as
    ``1e309`` parse to non-finite numbers)."""
    try:
        return float(value)
    except ValueError:
        return math.nan


def canonical(value: str) -> str:
    """A number's one spelling: ``1``, ``1.0`` and ``01`` are ``1``; ``0.50`` is ``0.5``; anything
    else (text, non-finite numbers) as it is."""
    x = _parse(value)
    if not math.isfinite(x):
        return value
    if x == int(x) and abs(x) < 2 ** 53:
        return str(int(x))
    return repr(x)


class _Column:
    """One column's values, read once: the distinct values, their counts and their numbers."""

    def __init__(self, values: Sequence[str]) -> None:
        arr = np.asarray(values, dtype=str)
        self.uniq, self.inverse, self.counts = np.unique(arr, return_inverse=True, return_counts=True)
        self.numbers = np.array([_parse(v) for v in self.uniq], dtype=np.float64)
        self.is_text = np.array([not _is_number(v) for v in self.uniq], dtype=bool)
        self.numeric = not self.is_text.any()

    def text_share(self) -> float:
        return float(self.counts[self.is_text].sum()) / float(self.counts.sum())

    def first_text(self) -> str:
        """The first value (in record order) that is not a number."""
        mask = self.is_text[self.inverse]
        return str(self.uniq[self.inverse[np.argmax(mask)]]) if mask.any() else ""

    def values(self) -> np.ndarray:
        return self.numbers[self.inverse]

    def few_integers(self) -> bool:
        n = self.numbers
        if not np.isfinite(n).all() or (n != np.round(n)).any():
            return False
        distinct = len(set(n.tolist()))
        return distinct <= FEW_VALUES and distinct * PER_VALUE <= int(self.counts.sum())

    def categories(self, counts: bool = False):
        """Sorted categories (numbers: one per number, by value; else as text) and their counts."""
        if self.numeric and np.isfinite(self.numbers).all():
            merged: dict[float, int] = {}
            for x, c in zip(self.numbers.tolist(), self.counts.tolist()):
                merged[x] = merged.get(x, 0) + c
            keys = sorted(merged)
            cats = [canonical(repr(x)) for x in keys]
            cnt = [merged[x] for x in keys]
        else:
            cats, cnt = [str(u) for u in self.uniq], self.counts.tolist()
        return (cats, cnt) if counts else cats


def _strings(items: Any) -> bool:
    return isinstance(items, list) and all(isinstance(i, str) for i in items)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _index(names: Sequence[str]):
    """A lookup of a value's position in ``names``: by the value itself, else (names all numbers)
    by its number's one spelling (:func:`canonical`); None when not there."""
    exact = {v: i for i, v in enumerate(names)}
    numeric = all(canonical(v) == v and math.isfinite(_parse(v)) for v in names)

    def find(value: str) -> Optional[int]:
        k = exact.get(value)
        return exact.get(canonical(value)) if k is None and numeric else k

    return find


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def numeric_columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The columns whose every value is a number (finite or not)."""
    columns = list(zip(*rows)) if rows else [() for _ in header]
    return [name for name, col in zip(header, columns) if all(_is_number(v) for v in set(col))]


def drop_nonfinite(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[str],
                   source: str = "the table") -> tuple[list[Sequence[str]], str]:
    """The records whose values in the ``numeric`` columns are finite numbers, and one line naming
    what was left out (``nan``, ``inf``, ``-Infinity``, an overflowing ``1e309``: missing values),
    empty when nothing was."""
    header = [h.strip() for h in header]
    keep = np.ones(len(rows), dtype=bool)
    found: list[str] = []
    for name in numeric:
        i = header.index(name)
        col = _Column([r[i] for r in rows])
        bad = ~np.isfinite(col.numbers) & ~col.is_text
        if bad.any():
            keep &= ~bad[col.inverse]
            found.append(f"{name} ({', '.join(repr(str(u)) for u in col.uniq[bad][:3])})")
    if keep.all():
        return list(rows), ""
    kept = [r for r, k in zip(rows, keep.tolist()) if k]
    return kept, (f"{source}: {len(rows) - len(kept)} of {len(rows)} records hold a number that is not finite in "
                  f"{'; '.join(found)} and are left out as missing")


def read_csv(path: str | Path) -> tuple[list[str], list[list[str]], int]:
    """A CSV file's header and its complete records (fields stripped); records with a missing value
    (``?`` or empty) are left out and counted. UTF-8, with or without a byte-order mark. A file that
    is not a regular file, a header with an empty or a repeated column name, or a record with another
    number of fields is a one-line error."""
    import csv

    path = regular_file(path, "CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise ValueError(f"CSV file {path} is empty")
            for i, name in enumerate(header):
                if not name:
                    raise ValueError(f"CSV file {path}: column {i + 1} of the header has no name")
                if header.index(name) != i:
                    raise ValueError(f"CSV file {path}: column name {name!r} appears twice in the header "
                                     f"(columns {header.index(name) + 1} and {i + 1})")
            rows, dropped, width = [], 0, len(header)
            for r in reader:
                r = [v.strip() for v in r]
                if not any(r):
                    continue  # a blank line
                if len(r) != width:
                    raise ValueError(f"CSV file {path}, line {reader.line_num}: {len(r)} fields, the header has {width}")
                if any(v in MISSING for v in r):
                    dropped += 1
                    continue
                rows.append(r)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot read CSV file {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if not rows:
        raise ValueError(f"CSV file {path} has no complete record")
    return header, rows, dropped


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


class TabularKind(DataKind):
    name = "tabular"
    records = "records"
    score_label = "accuracy"
    score_name = "accuracy"
    summary_metrics = (("accuracy", "accuracy", ".3f"), ("accuracy_categorical", "categorical accuracy", ".3f"),
                       ("accuracy_continuous", "continuous accuracy", ".3f"))
    headline_metrics = ("accuracy", "accuracy_categorical", "accuracy_continuous")

    def __init__(self, schema: TableSchema, relax: bool = True) -> None:
        super().__init__((schema.width,))
        self.schema = schema
        self.relax = relax
        blocks = schema.blocks()
        self._cat = [sl for f, sl in blocks if f.type == "categorical"]
        cont = [sl.start for f, sl in blocks if f.type == "continuous"]
        self._cont = torch.tensor(cont, dtype=torch.long)
        feats = [f for f in schema.features if f.type == "continuous"]
        self._lo = torch.tensor([(f.min - f.mean) / f.std for f in feats])
        self._hi = torch.tensor([(f.max - f.mean) / f.std for f in feats])
        self._standardized = schema.standardized_onehot
        self._mean, self._std = schema.column_stats()

    def distributions(self, x: Tensor) -> Tensor:
        """Model inputs ``[..., D]`` with every categorical block as its (soft) one-hot, the
        standardisation of the one-hot columns undone (the same tensor for plain one-hot)."""
        if not self._standardized:
            return x
        return x * self._std.to(x) + self._mean.to(x)

    def standardized(self, x: Tensor) -> Tensor:
        """The inverse of :meth:`distributions`: one-hot blocks as the model sees them."""
        if not self._standardized:
            return x
        return (x - self._mean.to(x)) / self._std.to(x)

    def relaxed(self, relax: bool) -> "TabularKind":
        """The same table with or without TabLeak's relaxation of the dummy."""
        return self if relax == self.relax else TabularKind(self.schema, relax)

    def initial(self, batch_size: int, init: str, generator: torch.Generator) -> Tensor:
        shape = (batch_size, self.schema.width)
        if init == "uniform":  # TabLeak: every entry uniform on [-1, 1]
            return 2 * torch.rand(shape, generator=generator) - 1
        if init == "randn":
            return torch.randn(shape, generator=generator)
        return torch.zeros(shape)

    def to_input(self, dummy: Tensor) -> Tensor:
        if not self.relax:
            return dummy
        parts = dummy.clone()
        for sl in self._cat:
            parts[..., sl] = dummy[..., sl].softmax(-1)
        if self._cont.numel():
            idx = self._cont.to(dummy.device)
            lo, hi = self._lo.to(dummy), self._hi.to(dummy)
            parts[..., idx] = lo + (hi - lo) * torch.sigmoid(dummy[..., idx])
        return self.standardized(parts)

    can_harden = True
    #: a fixed categorical feature's logits: its argmax this, the others 0 (softmax one-hot to ~1e-13)
    HARD_LOGIT = 30.0

    def harden_(self, dummy: Tensor) -> Tensor:
        """TabLeak's two-staged mode: every categorical block of the dummy ``[..., B, D]`` set to its
        argmax, one-hot (relaxed: logits ``HARD_LOGIT`` and 0, a softmax one-hot to float32
        rounding); returns the mask of the entries still free (the continuous ones)."""
        free = torch.ones_like(dummy)
        dist = dummy if self.relax else self.distributions(dummy)
        for sl in self._cat:
            block = dist[..., sl]
            one_hot = torch.nn.functional.one_hot(block.argmax(-1), block.shape[-1]).to(dummy)
            if self.relax:
                dummy[..., sl] = one_hot * self.HARD_LOGIT
            else:  # the encoded row: standardised one-hot when the schema standardises it
                dummy[..., sl] = (one_hot - self._mean[sl].to(dummy)) / self._std[sl].to(dummy)
            free[..., sl] = 0
        return free

    def project_(self, dummy: Tensor) -> None:
        """Unrelaxed dummies: continuous values clamped to their bounds (a relaxed dummy needs nothing)."""
        if not self.relax and self._cont.numel():
            idx = self._cont.to(dummy.device)
            dummy[..., idx] = torch.maximum(torch.minimum(dummy[..., idx], self._hi.to(dummy)), self._lo.to(dummy))

    def combine(self, aligned: Tensor) -> tuple[Tensor, Tensor]:
        """TabLeak's pooling: the mean of the softmaxes for categorical features, the median for
        continuous ones. Entropy per cell ``[B, F]``, on two scales as TabLeak computes and reports
        them (its ``calculate_entropy_heat_map``), which are not comparable with each other: a
        categorical feature's entropy of the pooled distribution over log(categories) (0: certain, 1:
        uniform); a continuous one's Gaussian differential entropy ``0.5 + 0.5 log(2 pi sigma^2)``, in
        nats, of the restarts' spread ``sigma`` in standardised units (negative below sigma 0.24), NaN
        with one restart (no spread to measure)."""
        R = aligned.shape[0]
        aligned = self.distributions(aligned)
        pooled = aligned.mean(0)
        ents = []
        for f, sl in self.schema.blocks():
            if f.type == "categorical":
                p = aligned[..., sl] if self.relax else _one_hot_argmax(aligned[..., sl])
                p = p.mean(0).clamp_min(0)
                p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
                pooled[..., sl] = p
                k = sl.stop - sl.start
                # entr(p) = -p log p, exactly 0 at p = 0 and 1: a certain feature's entropy is 0, never -0
                ents.append(torch.special.entr(p).sum(-1) / math.log(k) if k > 1 else torch.zeros(p.shape[0]))
            else:
                col = aligned[..., sl.start]
                pooled[..., sl.start] = col.median(0).values
                sd = col.std(0) if R > 1 else torch.full_like(col[0], float("nan"))
                ents.append(0.5 + 0.5 * torch.log(2 * math.pi * sd.pow(2) + 1e-12))
        return self.standardized(pooled), torch.stack(ents, -1)

    def match_cost(self, reference: Tensor, other: Tensor) -> Tensor:
        """TabLeak's matching: the share of features on which two rows disagree (its error), ties
        broken by the squared distance."""
        err = self.error_counts(other, reference).t().double() / len(self.schema.features)
        return err + 1e-6 * super().match_cost(reference, other) / reference.shape[-1]

    def _feature_errors(self, recon: Tensor, truth: Tensor, pairwise: bool):
        """TabLeak's error (True wrong, False right) of each feature in turn: ``[Br, Bt]`` of every
        reconstructed row against every true row (``pairwise``), else ``[B]`` of row ``i`` against
        row ``i``. A categorical value is wrong when its argmax differs, a continuous one (clamped to
        its bounds) when it is off by more than ``TOLERANCE`` standard deviations."""
        recon_d, truth_d = self.distributions(recon), self.distributions(truth)
        for f, sl in self.schema.blocks():
            if f.type == "categorical":
                r, t = recon_d[:, sl].argmax(-1), truth_d[:, sl].argmax(-1)
            else:
                lo, hi = (f.min - f.mean) / f.std, (f.max - f.mean) / f.std
                r, t = recon[:, sl.start].clamp(lo, hi), truth[:, sl.start]
            if pairwise:
                r, t = r[:, None], t[None, :]
            yield (r != t) if f.type == "categorical" else (r - t).abs_() > TOLERANCE

    def error_counts(self, recon: Tensor, truth: Tensor) -> Tensor:
        """The number of features on which every reconstructed row disagrees with every true row,
        ``[Br, Bt]`` (float32 integers, exact), summed one feature at a time: memory ``Br x Bt``,
        never ``x F``."""
        total = torch.zeros(recon.shape[0], truth.shape[0])
        for wrong in self._feature_errors(recon, truth, pairwise=True):
            total += wrong
        return total

    def errors(self, recon: Tensor, truth: Tensor) -> Tensor:
        """TabLeak's error of row ``i`` of ``recon`` against row ``i`` of ``truth``, per feature
        ``[B, F]`` (0 right, 1 wrong)."""
        return torch.stack(list(self._feature_errors(recon, truth, pairwise=False)), -1).float()

    def evaluate(self, recon: Tensor, truth: Tensor, entropy: Optional[Tensor] = None) -> dict[str, Any]:
        """TabLeak's accuracy after matching rows (the Hungarian algorithm on :meth:`error_counts`):
        ``accuracy`` ``[V]`` over all cells, ``accuracy_categorical``/``accuracy_continuous`` ``[V]``,
        ``feature_accuracy`` ``[V, F]``, ``correct`` ``[V, B, F]`` (in the truth's row order),
        ``perm`` ``[V, B]``; with an ``entropy`` ``[V, B, F]`` of the reconstruction (pooled restarts), it
        in the truth's order and its means over the categorical cells (``entropy_categorical``, 0-1) and
        over the continuous ones (``entropy_continuous``, nats; NaN with one restart)."""
        recon = recon.detach().float().cpu()
        truth = truth.detach().float().cpu()
        V, B = truth.shape[:2]
        perms, correct = [], []
        for v in range(V):
            perm = hungarian(self.error_counts(recon[v], truth[v]))
            perms.append(perm)
            correct.append(1 - self.errors(recon[v][perm], truth[v]))  # [Bt, F]
        correct_t = torch.stack(correct)
        perm_t = torch.stack(perms)
        cat = torch.tensor([f.type == "categorical" for f in self.schema.features])
        nan = torch.full((V,), float("nan"))
        out = {
            "accuracy": correct_t.mean((1, 2)),
            "accuracy_categorical": correct_t[..., cat].mean((1, 2)) if cat.any() else nan,
            "accuracy_continuous": correct_t[..., ~cat].mean((1, 2)) if (~cat).any() else nan,
            "feature_accuracy": correct_t.mean(1),
            "correct": correct_t,
            "perm": perm_t,
        }
        out["score"] = out["accuracy"]
        if entropy is not None:  # two scales (see combine): each type's mean apart
            ent = torch.stack([entropy[v].cpu()[perm_t[v]] for v in range(V)])
            out["entropy"] = ent
            out["entropy_categorical"] = ent[..., cat].nanmean((1, 2)) if cat.any() else nan
            out["entropy_continuous"] = ent[..., ~cat].nanmean((1, 2)) if (~cat).any() else nan
        return out

    def scalar_names(self) -> tuple[str, ...]:
        return ("accuracy", "accuracy_categorical", "accuracy_continuous")

    def check_truth(self, truth: Tensor) -> None:
        """True rows must be encoded as the schema encodes them (:meth:`TableSchema.encode`): the
        schema's width, every categorical block one-hot, every continuous value standardised and
        within the schema's bounds (a value outside them cannot be reconstructed, whose values are
        clamped to the bounds, and a raw unstandardised value lies outside them)."""
        super().check_truth(truth)
        hint = "encode the records with the schema: TableSchema.encode(header, rows)"
        if truth.shape[-1] != self.schema.width:
            raise ValueError(f"the true rows have {truth.shape[-1]} columns; the schema encodes a record in "
                             f"{self.schema.width} (one-hot categories, standardised continuous values): {hint}")
        if not bool(torch.isfinite(truth).all()):
            raise ValueError(f"the true rows hold a value that is not finite: {hint}")
        dist = self.distributions(truth.float())
        for f, sl in self.schema.blocks():
            if f.type != "categorical":
                continue
            block = dist[..., sl]
            if self._standardized:  # de-standardised in float32: one-hot to rounding
                block = torch.where((block - block.round()).abs() < 1e-4, block.round(), block)
            if not bool(((block == 0) | (block == 1)).all() and (block.sum(-1) == 1).all()):
                raise ValueError(f"the true rows are not encoded rows of the schema: feature {f.name!r} is not one-hot "
                                 "(encode records with the schema, e.g. TableSchema.encode)")
        for (f, sl), lo, hi in zip([b for b in self.schema.blocks() if b[0].type == "continuous"], self._lo, self._hi):
            col = truth[..., sl.start].double()
            tol = 1e-4 * (1 + max(abs(float(lo)), abs(float(hi))))  # float32 rounding of the encoded bounds
            bad = (col < float(lo) - tol) | (col > float(hi) + tol)
            if bool(bad.any()):
                raise ValueError(
                    f"the true rows are not encoded rows of the schema: {f.name} holds {float(col[bad][0]):.6g}, outside "
                    f"its encoded range [{float(lo):.3g}, {float(hi):.3g}] (values {f.min:g} to {f.max:g}, standardised "
                    f"by mean {f.mean:.6g} and std {f.std:.6g}; a raw value is not standardised): {hint}")

    def label_names(self, labels: list[int]) -> list[str]:
        """Class indices as the table's own label values (``schema.classes``)."""
        return [self.schema.classes[int(i)] for i in labels]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "relax": self.relax, "schema": json.loads(self.schema.to_json())}


def _one_hot_argmax(block: Tensor) -> Tensor:
    return torch.nn.functional.one_hot(block.argmax(-1), block.shape[-1]).to(block.dtype)
