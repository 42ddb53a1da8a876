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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from .base import DataKind, hungarian

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
              categorical: Optional[Sequence[str]] = None, standardize_onehot: bool = False) -> "TableSchema":
        """The schema of complete records (no missing value): the label column (default: the last),
        categorical columns as named, else every column with a value that is not a number;
        ``standardize_onehot``: the one-hot columns standardised by the records' frequencies (TabLeak's encoding)."""
        header = [h.strip() for h in header]
        label = header[-1] if label is None else label
        if label not in header:
            raise ValueError(f"no label column {label!r} in the table (columns: {', '.join(header)})")
        for name in categorical or ():
            if name not in header:
                raise ValueError(f"categorical column {name!r} is not in the table (columns: {', '.join(header)})")
        li = header.index(label)
        classes = sorted({r[li] for r in rows})
        if len(classes) < 2:
            raise ValueError(f"label column {label!r} holds {len(classes)} value(s); a classifier needs two or more")
        features = []
        for i, name in enumerate(header):
            if i == li:
                continue
            values = [r[i] for r in rows]
            numbers = [_number(v) for v in values]
            if (categorical is not None and name in categorical) or (categorical is None and None in numbers):
                cats = sorted(set(values))
                feat = Feature(name, "categorical", cats)
                if standardize_onehot:
                    freq = [values.count(c) / len(values) for c in cats]
                    feat.onehot_mean = freq
                    feat.onehot_std = [math.sqrt(p * (1 - p)) or 1.0 for p in freq]
                features.append(feat)
            else:
                if None in numbers:
                    bad = values[numbers.index(None)]
                    raise ValueError(f"column {name!r} is continuous but holds {bad!r}, not a number")
                t = torch.tensor(numbers, dtype=torch.float64)
                std = float(t.std(unbiased=False)) or 1.0
                features.append(Feature(name, "continuous", [], float(t.mean()), std, float(t.min()), float(t.max()),
                                        bool((t == t.round()).all())))
        if not features:
            raise ValueError("the table has no feature columns besides the label")
        return cls(features, label, classes)

    def to_json(self) -> str:
        return json.dumps({"label": self.label, "classes": self.classes,
                           "features": [asdict(f) for f in self.features]}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TableSchema":
        data = json.loads(text)
        return cls([Feature(**f) for f in data["features"]], data["label"], list(data["classes"]))

    # ----------------------------------------------------------- encoding
    def encode(self, header: Sequence[str], rows: Sequence[Sequence[str]], source: str = "the table") -> tuple[Tensor, Tensor]:
        """Encoded rows ``[N, D]`` and labels ``[N]``; a value the schema cannot encode is an error."""
        header = [h.strip() for h in header]
        missing = [f.name for f in self.features if f.name not in header] + ([self.label] if self.label not in header else [])
        if missing:
            raise ValueError(f"{source} has no column {missing[0]!r} of the schema")
        cols = [header.index(f.name) for f in self.features]
        li = header.index(self.label)
        x = torch.zeros(len(rows), self.width)
        y = torch.zeros(len(rows), dtype=torch.long)
        stats = {f.name: (torch.tensor(f.onehot_mean), torch.tensor(f.onehot_std))
                 for f in self.features if f.onehot_std}
        for n, r in enumerate(rows):
            if r[li] not in self.classes:
                raise ValueError(f"{source}, record {n}: label {r[li]!r} is not a class of the schema ({', '.join(self.classes)})")
            y[n] = self.classes.index(r[li])
            for (f, sl), c in zip(self.blocks(), cols):
                v = r[c]
                if f.type == "categorical":
                    if v not in f.categories:
                        raise ValueError(f"{source}, record {n}: {f.name} {v!r} is not a category of the schema")
                    x[n, sl.start + f.categories.index(v)] = 1.0
                    if f.name in stats:
                        x[n, sl] = (x[n, sl] - stats[f.name][0]) / stats[f.name][1]
                else:
                    num = _number(v)
                    if num is None:
                        raise ValueError(f"{source}, record {n}: {f.name} {v!r} is not a number")
                    x[n, sl.start] = (num - f.mean) / f.std
        return x, y

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


def _number(value: str) -> Optional[float]:
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_csv(path: str | Path) -> tuple[list[str], list[list[str]], int]:
    """A CSV file's header and its complete records (fields stripped); records with a missing value
    (``?`` or empty) are left out and counted."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CSV file not found: {path}" if not path.exists() else f"{path} is not a file")
    try:
        with open(path, newline="") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot read CSV file {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if not lines or not lines[0]:
        raise ValueError(f"CSV file {path} is empty")
    header = [h.strip() for h in lines[0]]
    rows, dropped = [], 0
    for n, r in enumerate(lines[1:], start=2):
        if not any(v.strip() for v in r):
            continue  # a blank line
        if len(r) != len(header):
            raise ValueError(f"CSV file {path}, line {n}: {len(r)} fields, the header has {len(header)}")
        r = [v.strip() for v in r]
        if any(v in MISSING for v in r):
            dropped += 1
            continue
        rows.append(r)
    if not rows:
        raise ValueError(f"CSV file {path} has no complete record")
    return header, rows, dropped


class TabularKind(DataKind):
    name = "tabular"
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
        continuous ones. Entropy per cell ``[B, F]``: a categorical feature's entropy of the pooled
        distribution over log(categories) (0: certain, 1: uniform); a continuous one's Gaussian
        differential entropy ``0.5 + 0.5 log(2 pi sigma^2)`` of the restarts' spread (TabLeak's),
        NaN with one restart."""
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
                ents.append((-(p * (p + 1e-7).log()).sum(-1) / math.log(k)) if k > 1 else torch.zeros(p.shape[0]))
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
        ``perm`` ``[V, B]``; with an ``entropy`` ``[V, B, F]`` of the reconstruction, it in the
        truth's order and its mean."""
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
        if entropy is not None:
            ent = torch.stack([entropy[v].cpu()[perm_t[v]] for v in range(V)])
            out["entropy"] = ent
            out["entropy_categorical"] = ent[..., cat].nanmean((1, 2)) if cat.any() else nan
        return out

    def scalar_names(self) -> tuple[str, ...]:
        return ("accuracy", "accuracy_categorical", "accuracy_continuous")

    def check_truth(self, truth: Tensor) -> None:
        """True rows must be encoded as the schema encodes them (:meth:`TableSchema.encode`): every
        categorical block one-hot."""
        super().check_truth(truth)
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

    figure_heading = "Records"
    figure_alt = "per-feature accuracy"
    figure_caption = "TabLeak's accuracy of every feature over the victims' records."

    def outcome(self, summary: dict, success: float, style: str = "text") -> str:
        s = summary
        if style == "text":
            return (f"records' accuracy (TabLeak's): {100 * s['accuracy_mean']:.1f}%  label accuracy "
                    f"{100 * s['label_acc']:.1f}%  failed {s['failed']}")
        if style == "markdown":
            return (f"**records reconstructed with {100 * s['accuracy_mean']:.1f}% accuracy** (TabLeak's); "
                    f"{s['success']}/{s['victims']} victims at accuracy >= {success:g}; "
                    f"label accuracy {100 * s['label_acc']:.1f}%, numerically failed {s['failed']}.")
        return (f"<b>records reconstructed with {100 * s['accuracy_mean']:.1f}% accuracy</b> (TabLeak's: categorical "
                f"exact, continuous within {TOLERANCE} standard deviations); {s['success']}/{s['victims']} victims at "
                f"accuracy &ge; {success:g}; label accuracy {100 * s['label_acc']:.1f}%, "
                f"{s['failed']} numerically failed.")

    def figure(self, recon, labels, *, truth, true_labels, indices, metrics, failed, success, title):
        if metrics is None:
            return None
        from .views import feature_accuracy_png

        feats = self.schema.features
        return feature_accuracy_png([f.name for f in feats], metrics["feature_accuracy"].mean(0),
                                    [f.type for f in feats], title=f"{title}: per-feature accuracy" if title else "")

    def details(self, recon: Tensor, truth: Optional[Tensor], metrics: Optional[dict]) -> dict[str, str]:
        """Per feature: accuracy and mean entropy; per victim: its rows, truth against reconstruction."""
        from . import views

        text, md, html = [], [], []
        if metrics is not None:
            acc = metrics["feature_accuracy"].mean(0)
            ent = metrics.get("entropy")
            lines = ["feature            type         accuracy  entropy"]
            for j, f in enumerate(self.schema.features):
                e = float(ent[..., j].nanmean()) if ent is not None else float("nan")
                lines.append(f"{f.name:<18} {f.type:<12} {100 * float(acc[j]):7.1f}%  {e:7.3f}")
            lines.append(f"overall accuracy {100 * float(metrics['accuracy'].mean()):.1f}%  (categorical "
                         f"{100 * float(metrics['accuracy_categorical'].mean()):.1f}%, continuous "
                         f"{100 * float(metrics['accuracy_continuous'].mean()):.1f}%; a continuous value counts "
                         f"within {TOLERANCE} x its standard deviation)")
            text.append("\n".join(lines))
            html.append("<pre>" + "\n".join(lines).replace("&", "&amp;").replace("<", "&lt;") + "</pre>")
        for v in range(recon.shape[0]):
            table = views.row_table(self.schema, recon, truth, metrics, v)
            text.append(f"victim {v} (wrong cells end in *; H: entropy of the pooled feature)\n" + views.rows_text(*table))
            md.append(f"**victim {v}**\n\n" + views.rows_markdown(*table))
            html.append(f"<h3>Victim {v}</h3>" + views.rows_html(*table))
        return {"text": "\n".join(text), "markdown": "\n\n".join(md), "html": "\n".join(html)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "relax": self.relax, "schema": json.loads(self.schema.to_json())}


def _one_hot_argmax(block: Tensor) -> Tensor:
    return torch.nn.functional.one_hot(block.argmax(-1), block.shape[-1]).to(block.dtype)
