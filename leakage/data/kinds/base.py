"""What differs between kinds of data (images, tables), behind one small interface.

A kind owns the dummy's parametrisation and its map to the model's input, the priors that apply,
how the restarts of a victim are pooled, and how a reconstruction is decoded, matched to the truth,
scored and shown. The attack, the clients, the defenses, the sweep and the report take a kind and
never ask which one it is. Shapes: a problem's dummy is ``[B, *sample_shape]``; ``P`` problems
stack to ``[P, B, *sample_shape]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


class DataKind(ABC):
    """One kind of data. ``name`` says which in results and reports."""

    name: str = ""
    #: the name of the headline per-victim score in [0, 1] (images ``ssim``, tables ``accuracy``)
    score_name: str = ""
    score_label: str = ""  # how reports name it
    #: what a client's private data are, in reports' words (images, records)
    records: str = "data"
    #: what a success count counts (a victim is reconstructed when its score reaches the bar)
    success_unit: str = "victims"
    #: the attack's prior weights that apply to this kind (others must stay 0)
    priors: tuple[str, ...] = ()
    #: the per-victim metrics a summary of runs shows (a sweep's tables, plots and hparams: their
    #: means over a cell's victims), in order, each ``(key, header, format spec)``; the score among them
    summary_metrics: tuple[tuple[str, str, str], ...] = ()
    #: the keys of those a compact table shows (a study's table and plot, the summary card), the score first
    headline_metrics: tuple[str, ...] = ()
    #: this kind's own columns of a per-victim result row (``metrics.csv``, ``metrics.json``), in order: NaN
    #: where the victims are not scored; a row holds no other kind's columns
    columns: tuple[str, ...] = ()
    #: further columns of its own a row holds only where they are measured (a table's pooled entropies)
    measured_columns: tuple[str, ...] = ()

    def __init__(self, sample_shape: tuple[int, ...]) -> None:
        self.sample_shape = tuple(int(s) for s in sample_shape)

    # ------------------------------------------------------------ the dummy
    @abstractmethod
    def initial(self, batch_size: int, init: str, generator: torch.Generator) -> Tensor:
        """One problem's initial dummy parameters ``[B, *param_shape]`` (``init`` names the scheme)."""

    def relaxed(self, relax: bool) -> "DataKind":
        """This kind with TabLeak's relaxation of the dummy on or off (only tables have one)."""
        if relax:
            raise ValueError(f"relax (TabLeak's softmax/sigmoid relaxation) applies to tables, not to {self.name} data")
        return self

    def select(self, problems) -> "DataKind":
        """This kind for the problems ``problems`` (an index tensor or a slice of the attack's problems)
        only: a kind whose relaxation differs per problem (text's token sets) narrows it; default: itself."""
        return self

    def to_input(self, dummy: Tensor) -> Tensor:
        """The model input ``[..., B, *sample_shape]`` the dummy parameters stand for."""
        return dummy

    #: whether :meth:`harden_` applies (the attack's ``refine_steps``)
    can_harden = False

    def harden_(self, dummy: Tensor) -> Tensor:
        """Fix the discrete part of the dummy parameters in place (TabLeak's two-staged mode) and
        return the mask of the entries still optimized; only kinds with discrete features have one."""
        raise ValueError(f"{self.name} data has no discrete features to fix")

    def project_(self, dummy: Tensor) -> None:
        """Project the dummy parameters in place after a step (``box_constraint``); default: none."""

    def prior(self, dummy: Tensor, x: Tensor, weights: dict[str, float]) -> Optional[Tensor]:
        """The kind's prior per problem ``[P]`` at dummy parameters and model inputs, or None."""
        return None

    # ------------------------------------------------------ pooling restarts
    @abstractmethod
    def combine(self, aligned: Tensor) -> tuple[Tensor, Tensor]:
        """Pool a victim's restarts, slots aligned, ``[R, B, *sample_shape]`` (model inputs) into one
        reconstruction ``[B, *sample_shape]`` and a per-slot entropy (uncertainty) ``[B, ...]``."""

    def pool(self, x: Tensor, labels: Tensor, reference: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pooled ensembling (TabLeak): per victim, every restart's slots are matched to the slots of
        its ``reference`` restart by the Hungarian algorithm (on :meth:`match_cost`, equal labels
        first) and combined by :meth:`combine`.

        ``x`` ``[V, R, B, *sample_shape]``, ``labels`` ``[V, R, B]``, ``reference`` ``[V]`` (a restart
        index). Returns the pooled inputs ``[V, B, ...]``, their labels ``[V, B]`` and the entropy."""
        V, R, B = x.shape[:3]
        out, entropy, out_labels = [], [], []
        for v in range(V):
            ref = int(reference[v])
            aligned = []
            for r in range(R):
                cost = self.match_cost(x[v, ref].detach().cpu(), x[v, r].detach().cpu())
                cost = cost + 1e6 * (labels[v, ref][:, None] != labels[v, r][None, :]).cpu()
                rows, cols = linear_sum_assignment(cost.numpy())
                perm = torch.empty(B, dtype=torch.long)
                perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
                aligned.append(x[v, r].detach().cpu()[perm])
            pooled, ent = self.combine(torch.stack(aligned))
            out.append(pooled)
            entropy.append(ent)
            out_labels.append(labels[v, ref].cpu())
        return torch.stack(out), torch.stack(out_labels), torch.stack(entropy)

    def match_cost(self, reference: Tensor, other: Tensor) -> Tensor:
        """Cost ``[B, B]`` of pairing slot ``i`` of ``reference`` with slot ``j`` of ``other``
        (``[B, *sample_shape]`` model inputs): the squared distance."""
        return torch.cdist(reference.flatten(1).double(), other.flatten(1).double()).pow(2)

    # ------------------------------------------------- results and reports
    @abstractmethod
    def evaluate(self, recon: Tensor, truth: Tensor, entropy: Optional[Tensor] = None) -> dict[str, Any]:
        """Metrics of reconstructions ``[V, B, *sample_shape]`` against the secret inputs: at least
        ``score`` ``[V]`` (the headline score), ``perm`` ``[V, B]`` (``recon[v][perm[v, i]]``
        reconstructs ``truth[v, i]``) and the per-victim scalars named by :meth:`scalar_names`."""

    def scalar_names(self) -> tuple[str, ...]:
        """Per-victim metrics logged as scalars (each ``[V]`` in :meth:`evaluate`'s result)."""
        return (self.score_name,)

    def row_values(self, metrics: dict[str, Any], v: int) -> dict[str, Any]:
        """Victim ``v``'s values of this kind's :attr:`columns` (NaN where ``metrics``, :meth:`evaluate`'s
        result or empty when the victims are not scored, lacks one) and of its measured columns."""
        nan = float("nan")
        out = {k: float(metrics[k][v]) if k in metrics else nan for k in self.columns}
        out.update({k: float(metrics[k][v]) for k in self.measured_columns if k in metrics})
        return out

    def scalar_headers(self) -> dict[str, str]:
        """How tables head the per-victim scalars (:meth:`scalar_names`)."""
        names = {key: header for key, header, _ in self.summary_metrics}
        return {key: names.get(key, key) for key in self.scalar_names()}

    def overview_charts(self) -> dict[str, str]:
        """TensorBoard's CUSTOM SCALARS charts of the per-victim scalars: title -> tag pattern."""
        return {f"{header} of every victim": rf"^victim_\d+/{key}$" for key, header in self.scalar_headers().items()}

    def check_truth(self, truth: Tensor) -> None:
        """Refuse, in one line, true records ``[V, B, *sample_shape]`` this kind cannot score."""
        if not truth.is_floating_point():
            raise ValueError(f"the true {self.name} data must be floating-point, got {truth.dtype}")

    def with_metric_range(self, width: float) -> "DataKind":
        """This kind scoring over a value range of ``width`` (SSIM's and PSNR's data range)."""
        raise ValueError(f"data_range (the value range of SSIM and PSNR) applies to images, not to {self.name} data")

    def label_names(self, labels: list[int]) -> list:
        """Class indices as reports show them (images: the indices themselves)."""
        return labels

    def describe(self) -> dict[str, Any]:
        """The public description of the data (stored with the run)."""
        return {"kind": self.name, "sample_shape": list(self.sample_shape)}


def hungarian(cost: Tensor) -> Tensor:
    """Permutation ``perm`` minimising ``sum_i cost[perm[i], i]`` for a ``[B, B]`` cost of
    reconstruction (rows) against truth (columns)."""
    B = cost.shape[0]
    if B == 1:
        return torch.zeros(1, dtype=torch.long)
    rows, cols = linear_sum_assignment(cost.detach().double().cpu().numpy())
    perm = torch.empty(B, dtype=torch.long)
    perm[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return perm
