"""Tables: records of categorical and continuous features, one-hot and standardised (TabLeak's
encoding, the public schema the attacker knows: :class:`leakage.data.tables.TableSchema`).

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
from typing import Any, Optional

import torch
from torch import Tensor

from leakage.data.kinds.base import DataKind, hungarian
from leakage.data.tables import TableSchema

#: TabLeak's tolerance of a continuous value, in standard deviations of the feature
TOLERANCE = 0.319


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


class TabularKind(DataKind):
    name = "tabular"
    records = "records"
    score_label = "accuracy"
    score_name = "accuracy"
    summary_metrics = (("accuracy", "accuracy", ".3f"), ("accuracy_categorical", "categorical accuracy", ".3f"),
                       ("accuracy_continuous", "continuous accuracy", ".3f"))
    headline_metrics = ("accuracy", "accuracy_categorical", "accuracy_continuous")
    columns = ("accuracy", "accuracy_categorical", "accuracy_continuous")
    #: the mean entropy of the categorical and of the continuous cells, when restarts are pooled (two scales:
    #: categorical 0-1, continuous in nats; see :meth:`combine`)
    measured_columns = ("entropy_categorical", "entropy_continuous")

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
