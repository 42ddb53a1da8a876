"""Reading a table: CSV files, numbers written as text, and what a column's values say about it
(numeric or not, a few whole-number codes, a typo among numbers). The schema built from them is
:mod:`leakage.data.tables`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from leakage.engine.files import regular_file

#: how a missing value is written in a CSV file
MISSING = ("", "?")
#: a column of whole numbers with at most this many distinct values ...
FEW_VALUES = 10
#: ... each seen this many times on average is read as categorical (codes such as 1-4)
PER_VALUE = 5
#: a numeric column whose values are not numbers on at most this share of the records is a typo
TYPO_SHARE = 0.05


def parse_number(value: str) -> float:
    """``value`` as a number (NaN when it is not one; ``inf``, ``nan`` and overflowing ones such as
    ``1e309`` parse to non-finite numbers)."""
    try:
        return float(value)
    except ValueError:
        return math.nan


def canonical(value: str) -> str:
    """A number's one spelling: ``1``, ``1.0`` and ``01`` are ``1``; ``0.50`` is ``0.5``; anything
    else (text, non-finite numbers) as it is."""
    x = parse_number(value)
    if not math.isfinite(x):
        return value
    if x == int(x) and abs(x) < 2 ** 53:
        return str(int(x))
    return repr(x)


class Column:
    """One column's values, read once: the distinct values, their counts and their numbers."""

    def __init__(self, values: Sequence[str]) -> None:
        arr = np.asarray(values, dtype=str)
        self.uniq, self.inverse, self.counts = np.unique(arr, return_inverse=True, return_counts=True)
        self.numbers = np.array([parse_number(v) for v in self.uniq], dtype=np.float64)
        self.is_text = np.array([not is_number(v) for v in self.uniq], dtype=bool)
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


def value_index(names: Sequence[str]):
    """A lookup of a value's position in ``names``: by the value itself, else (names all numbers)
    by its number's one spelling (:func:`canonical`); None when not there."""
    exact = {v: i for i, v in enumerate(names)}
    numeric = all(canonical(v) == v and math.isfinite(parse_number(v)) for v in names)

    def find(value: str) -> Optional[int]:
        k = exact.get(value)
        return exact.get(canonical(value)) if k is None and numeric else k

    return find


def is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def numeric_columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The columns whose every value is a number (finite or not)."""
    columns = list(zip(*rows)) if rows else [() for _ in header]
    return [name for name, col in zip(header, columns) if all(is_number(v) for v in set(col))]


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
        col = Column([r[i] for r in rows])
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
