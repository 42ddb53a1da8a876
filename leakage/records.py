"""The plain data the rooms pass between them, each readable without importing its producer:

- :class:`Observation`: what the attacker sees (the shared gradients and public metadata), made by a
  data source (:mod:`leakage.data.datamodule`) and read by attacks, defenses and reports;
- :class:`Secret`: the victims' images and labels, read only by metrics and galleries;
- :class:`InversionResult`: what an attack recovered, per update (:func:`leakage.invert`);
- the per-victim result rows (:func:`victim_rows`, the columns of ``metrics.csv``) and their summary
  (:func:`summarize`), which the run's report, the API's :class:`leakage.api.Report` and the sweep read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from leakage.data.kinds.base import DataKind
from leakage.data.kinds.image import ImageKind
from leakage.engine.metrics import label_accuracy
from leakage.engine.seeding import position_key
from leakage.federated.client import CLIENT_MODES
from leakage.federated.fedavg import FedAvgClient
from leakage.federated.server import HONEST, PUBLIC_LABELS, Server

@dataclass
class Observation:
    """Everything the attacker may use besides the model: shared gradients and public metadata."""

    gradients: dict[str, Tensor]  # {parameter name: [V, *shape]}
    batch_size: int
    input_shape: tuple[int, ...]  # one sample's shape: [C, H, W] images, [D] encoded table rows
    num_classes: int
    data_range: tuple[float, float] = (0.0, 1.0)
    #: one public key per update, as a server names what it receives (round, client): every random
    #: draw of the attack on that update is seeded by it (:mod:`leakage.engine.seeding`). Image sources key
    #: an update by its images' dataset indices, captured files by its position; None: by position.
    update_keys: Optional[tuple[int, ...]] = None
    #: how the client ran the model for its update (public protocol setting): ``train`` (BatchNorm
    #: with the batch's own statistics, what FL clients do) or ``eval``; the attack simulates the same
    client_mode: str = "train"
    #: the client protocol that made the updates: None is FedSGD (one gradient, mean over the
    #: batch); a :class:`~leakage.federated.fedavg.FedAvgClient` holds the public FedAvg settings
    client: Optional[FedAvgClient] = None
    #: the kind of data (:mod:`leakage.data.kinds`): how a dummy is parametrised, decoded and scored;
    #: None: images of ``input_shape`` in ``data_range``
    kind: Optional[DataKind] = None
    #: the victims' labels ``[V, B]`` when they are public (TabLeak's threat model: labels known)
    labels: Optional[Tensor] = None
    #: the server (:mod:`leakage.federated.server`): None or an honest one is honest-but-curious; a malicious one
    #: records what it changed and the model it sent, which the clients trained and the attack targets
    server: Optional[Server] = None

    @property
    def threat_model(self) -> str:
        """Who attacks, in a few words: the first line of every report (with the labels when they are
        public: TabLeak's setting, where the server knows them)."""
        who = HONEST if self.server is None else self.server.describe()
        return who + (PUBLIC_LABELS if self.labels is not None else "")

    def __post_init__(self) -> None:
        if self.kind is None:
            self.kind = ImageKind(self.input_shape, self.data_range)
        if self.client_mode not in CLIENT_MODES:
            raise ValueError(f"unknown client mode {self.client_mode!r}; choose one of {', '.join(CLIENT_MODES)}")
        if self.update_keys is None:
            self.update_keys = tuple(position_key(i) for i in range(self.num_victims))
        self.update_keys = tuple(int(k) for k in self.update_keys)
        if len(self.update_keys) != self.num_victims:
            raise ValueError(f"{len(self.update_keys)} update keys for {self.num_victims} updates")
        carries = torch.zeros(self.num_victims, dtype=torch.bool)
        for g in self.gradients.values():
            carries |= g.reshape(self.num_victims, g[0].numel() if self.num_victims else 0).ne(0).any(1).cpu()
        zero = (~carries).nonzero().flatten().tolist()
        if zero:  # refused whole, before any attack: a zero update is an input mistake, not an outcome
            which = "the shared update is" if self.num_victims == 1 else (
                f"update{'s' if len(zero) > 1 else ''} {', '.join(map(str, zero[:5]))}{', ...' if len(zero) > 5 else ''}"
                f" (of {self.num_victims}, by position) {'are' if len(zero) > 1 else 'is'}")
            raise ValueError(f"{which} all zero: a zero update carries nothing to invert"
                             + ("" if self.num_victims == 1 else "; leave those victims out"))

    def gradient_estimate(self) -> dict[str, Tensor]:
        """The shared updates as gradients: as shared for FedSGD; for FedAvg the pseudo-gradient
        ``(w_0 - w_K) / local_lr``, the sum of the local gradients (label restoration reads it
        divided by ``local_steps``: :func:`leakage.attacks.labels.label_gradients`)."""
        if self.client is None:
            return self.gradients
        return {k: self.client.gradient_estimate(v) for k, v in self.gradients.items()}

    @property
    def num_victims(self) -> int:
        return next(iter(self.gradients.values())).shape[0]

    def select(self, victims: Sequence[int]) -> "Observation":
        """The observation of these updates only (one process's shard), in the given order."""
        victims = list(victims)
        if victims == list(range(self.num_victims)):
            return self
        index = torch.tensor(victims, dtype=torch.long)
        return replace(self, gradients={k: v[index] for k, v in self.gradients.items()},
                       update_keys=tuple(self.update_keys[i] for i in victims),
                       labels=None if self.labels is None else self.labels[index])

    @property
    def entries_per_unknown(self) -> float:
        """Gradient entries of one update per unknown input value (``B x C x H x W``).

        Below 1 the matching problem is underdetermined; above 1 it may still be, since entries are
        not independent equations: :mod:`leakage.attacks.identifiability` measures the Jacobian rank."""
        entries = sum(math.prod(g.shape[1:]) for g in self.gradients.values())
        unknowns = self.batch_size * math.prod(self.input_shape)
        return entries / unknowns


@dataclass
class Secret:
    """The victims' private batches. Attack code never reads this."""

    images: Tensor  # the model inputs [V, B, *sample_shape]: images in [0, 1], or encoded table rows
    labels: Tensor  # [V, B]
    indices: list[list[int]]  # dataset index of every image, per victim


@dataclass
class InversionResult:
    """What :func:`leakage.invert` recovered, per update ``v`` (its best restart).

    ``images`` ``[V, B, *input_shape]`` (model inputs: pixels, or encoded table rows), ``labels`` ``[V, B]``; ``matching_loss``, ``grad_l2``,
    ``grad_cosine`` ``[V]`` at the end; ``best_restart`` ``[V]``; ``failed`` ``[V]`` is True where
    every restart failed numerically (NaN or infinite loss). ``module`` is the attack itself;
    ``exact`` ``[V]`` is True where a closed-form attack's result is proven exact: every slot read off the
    update and the recovered batch reproduces the whole observed update (:data:`leakage.attacks.closedform.CERTIFIED_RESIDUAL`);
    ``entropy`` is the pooled restarts' uncertainty (tables with ``ensemble="pool"``: ``[V, B, F]``,
    one per reconstructed cell), else None. ``kind`` decodes the records
    (``result.kind.schema.decode(result.images[v])`` for a table's values).
    """

    images: Tensor
    labels: Tensor
    matching_loss: Tensor
    grad_l2: Tensor
    grad_cosine: Tensor
    best_restart: Tensor
    failed: Tensor
    #: the attack (a :class:`leakage.attacks.family.Attack`) that made the result
    module: Any
    exact: Optional[Tensor] = None
    entropy: Optional[Tensor] = None

    @property
    def kind(self) -> DataKind:
        """The kind of data reconstructed (:mod:`leakage.data.kinds`): it decodes, scores and shows it."""
        return self.module.kind

    def __repr__(self) -> str:
        V, B = self.labels.shape
        return (f"InversionResult({V} update(s) of {B} {self.kind.name} record(s) of shape {tuple(self.images.shape[2:])}, "
                f"failed {int(self.failed.sum())})")


#: the columns of every per-victim result row (:func:`victim_rows`; ``metrics.csv``), before and after the
#: kind's own (:attr:`leakage.data.kinds.DataKind.columns`: images SSIM, PSNR, MSE, each image's SSIM)
HEAD_COLUMNS = ("victim", "indices", "true_labels", "recovered_labels", "label_acc")
TAIL_COLUMNS = ("grad_l2", "grad_cosine", "final_loss", "best_restart", "status")
#: an image run's columns
COLUMNS = HEAD_COLUMNS + ImageKind.columns + TAIL_COLUMNS
#: the columns tables add (TabLeak's accuracy, and the mean entropy of the categorical and of the continuous
#: cells when restarts are pooled; absent when not): :class:`leakage.data.kinds.tabular.TabularKind`'s
TABLE_COLUMNS = ("accuracy", "accuracy_categorical", "accuracy_continuous", "entropy_categorical", "entropy_continuous")
#: the columns text adds (:class:`leakage.data.kinds.text.TextKind`: ROUGE F, token accuracy, exact sequences)
TEXT_COLUMNS = ("rouge1", "rouge2", "rougeL", "token_accuracy", "exact_sequences", "token_precision", "token_recall")


def row_columns(kind: DataKind, rows: Sequence[dict] = ()) -> tuple[str, ...]:
    """The columns of ``kind``'s result rows (``metrics.csv``'s header): the common ones, the kind's own, and
    its measured ones that ``rows`` hold."""
    measured = tuple(c for c in kind.measured_columns if any(c in r for r in rows))
    return HEAD_COLUMNS + kind.columns + measured + TAIL_COLUMNS


def summarize(rows: list[dict], success_ssim: float) -> dict[str, float]:
    """Aggregate numbers over victims: success count, means of the metrics, label accuracy."""
    n = len(rows)
    ok = [r for r in rows if r["status"] != "failed"]
    have_images = any(not math.isnan(r.get("ssim", float("nan"))) for r in rows)
    have_table = any(not math.isnan(r.get("accuracy", float("nan"))) for r in rows)
    have_text = any(not math.isnan(r.get("rouge1", float("nan"))) for r in rows)

    def mean(key: str) -> float:
        vals = [r[key] for r in ok if not math.isnan(r[key])]
        return sum(vals) / len(vals) if vals else float("nan")

    out = {"victims": n, "failed": n - len(ok), "grad_l2_mean": mean("grad_l2")}
    if have_table:  # a failed victim's records count as not reconstructed (accuracy 0)
        out.update(accuracy_mean=sum(r["accuracy"] for r in ok) / n, label_acc=sum(r["label_acc"] for r in rows) / n,
                   success=sum(r["accuracy"] >= success_ssim for r in ok),
                   accuracy_categorical_mean=mean("accuracy_categorical"),
                   accuracy_continuous_mean=mean("accuracy_continuous"))
    if have_text:  # a failed victim's sentences count as not reconstructed (0)
        out.update({f"{k}_mean": sum(r[k] for r in ok) / n for k in TEXT_COLUMNS},
                   label_acc=sum(r["label_acc"] for r in rows) / n, success=sum(r["rouge1"] >= success_ssim for r in ok))
    if have_images:
        out.update(
            success=sum(r["ssim"] >= success_ssim for r in ok),
            # a failed victim counts as SSIM 0 (nothing reliably recovered); PSNR and MSE have no
            # such value, so their means are over the victims that did not fail
            ssim_mean=sum(r["ssim"] for r in ok if not math.isnan(r["ssim"])) / n,
            psnr_mean=mean("psnr"),
            mse_mean=mean("mse"),
            label_acc=sum(r["label_acc"] for r in rows) / n,
            # batches: every image counts; the images of a failed victim count as not reconstructed
            images=sum(len(r.get("ssim_images") or [0]) for r in rows),
            image_success=sum(sum(x >= success_ssim for x in (r.get("ssim_images") or [r["ssim"]])) for r in ok),
        )
    return out


def victim_rows(recon: Tensor, labels: Tensor, evaluation: dict[str, Tensor], best_restart: Tensor,
                failed: Tensor, metrics: Optional[dict[str, Tensor]] = None, true_labels: Optional[Tensor] = None,
                indices: Optional[list[list[int]]] = None, kind=None) -> list[dict]:
    """One result row per victim (the columns of ``metrics.csv``).

    ``recon`` ``[V, B, C, H, W]`` and ``labels`` ``[V, B]`` are each victim's best reconstruction;
    ``evaluation`` holds its ``loss``, ``grad_l2`` and ``grad_cosine`` ``[V]``; ``failed`` ``[V]``
    marks victims whose every restart failed numerically. ``metrics`` (from
    :func:`leakage.engine.metrics.reconstruction_metrics`), ``true_labels`` and ``indices`` come from the
    secret and are left out (NaN, empty) when the victims' data is unknown. Labels are shown as
    ``kind`` names them (a table's own class values; images: class indices). A row holds the common
    columns and ``kind``'s own (:meth:`leakage.data.kinds.DataKind.row_values`; default images'), no other.
    """
    kind = kind if kind is not None else ImageKind()
    names = kind.label_names
    acc = label_accuracy(labels, true_labels) if true_labels is not None else None
    rows = []
    metrics = metrics or {}
    for v in range(recon.shape[0]):
        bad = bool(failed[v]) or not bool(torch.isfinite(recon[v]).all())
        rows.append({
            "victim": v,
            "indices": list(indices[v]) if indices is not None else [],
            "true_labels": names(true_labels[v].tolist()) if true_labels is not None else [],
            "recovered_labels": names(labels[v].tolist()),
            "label_acc": float(acc[v]) if acc is not None else float("nan"),
            **kind.row_values(metrics, v),
            "grad_l2": float(evaluation["grad_l2"][v]),
            "grad_cosine": float(evaluation["grad_cosine"][v]),
            "final_loss": float(evaluation["loss"][v]),
            "best_restart": int(best_restart[v]),
            "status": "failed" if bad else "ok",
        })
    return rows
