"""Closed-form attacks of a malicious server: they read the inputs off the rows its change planted.

Both need the observation's server (:mod:`leakage.server`), which the attacker is: the change it
made is public to it, and the clients trained the changed model.

- :class:`ImprintAttack` (Fowl et al., "Robbing the Fed", ICLR 2022): the imprint module's rows are
  cumulative, row ``i`` summing the inputs whose feature exceeds cut ``i`` with the same weight per
  input in every row, so the difference of neighbouring rows holds the inputs of one bin:
  ``x = (dW_i - dW_{i+1}) / (db_i - db_{i+1})``, exactly one input where the bin holds one. The
  bins that hold any input (a bias difference above rounding) fill the batch's slots, the largest
  first. ``B`` bins holding an input is the read-out's condition for exact (FedSGD; under FedAvg an
  input's bin can drift between local steps), not its proof: noise or masks fill every bin. A
  victim is certified exact only when, besides, the recovered batch reproduces the whole update
  (:mod:`leakage.closedform`).
- :class:`TrapWeightAttack` (Boenisch et al., "When the Curious Abandon Honesty", EuroS&P 2023):
  every first-layer row with a bias gradient gives a candidate ``dW_i / db_i``, one input where the
  row fired for that input only, a mixture otherwise. Rows that fired for the same single input give
  the same candidate to float32 rounding: candidates in the data range are grouped when they agree to
  :data:`DUPLICATE_TOLERANCE` (tight: on an untrained model two inputs of one label have nearly the
  same output, and rows that fire for both repeat one mixture to about 4e-4), and the largest groups fill the batch's
  slots (then single candidates). The read-out's condition for exact is ``B`` groups of two or more
  rows whose inputs are distinct (no two within :data:`DISTINCT_TOLERANCE`); the certificate also
  needs the recovered batch to reproduce the whole update (:mod:`leakage.closedform`).

Slots left over (fewer bins or candidates than inputs) hold filler, the middle of the data range: not a
reconstruction, so the report's notes count them, they are never certified exact, and a victim with no
candidate at all (trap weights on a table whose encoded rows leave the data range, say) is a failed
result, not ``B`` identical filler rows. Labels
come from a batch label restoration of the last layer (:mod:`leakage.labels`); FedAvg updates are
read in pseudo-gradient units. Under secure aggregation the aggregate of ``K`` clients is one
update of ``K x B`` inputs, and both attacks read it the same way (Robbing the Fed's point);
masked updates (``target: masked``) hide every row.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .closedform import ClosedFormAttack
from .data import Observation
from .labels import BATCH_STRATEGIES
from .server import ImprintServer, TrapWeightServer

#: a bin or row holds an input when its bias gradient is above this fraction of the largest
MIN_RELATIVE_BIAS = 1e-5
#: two trap-weight candidates are one input when they differ by at most this, relative to their size
DUPLICATE_TOLERANCE = 1e-5
#: a victim's trap-weight result is exact only when its groups' inputs differ by more than this
DISTINCT_TOLERANCE = 1e-2


def _server(observation: Observation, kind: type, attack: str, setting: str):
    server = observation.server
    if not isinstance(server, kind):
        given = "an honest-but-curious server" if server is None or not server.malicious else server.describe()
        raise ValueError(f"the {attack} attack reads what a malicious server planted: run it with --data.server "
                         f"{setting} (the observation has {given})")
    return server


def _listed(victims: list[int], most: int = 10) -> str:
    """Victim numbers for a one-line note: the first ``most``, then how many more."""
    shown = ", ".join(map(str, victims[:most]))
    return shown + (f" and {len(victims) - most} more" if len(victims) > most else "")


class _MaliciousAttack(ClosedFormAttack):
    """The settings both attacks share: the target and the labels' restoration."""

    def __init__(self, model: Union[nn.Module, str], input_shape: Sequence[int], num_classes: int, model_seed: int,
                 model_weights: Optional[str], labels: str) -> None:
        super().__init__()
        if labels not in BATCH_STRATEGIES:
            raise ValueError(f"unknown label strategy {labels!r}; choose one of {', '.join(BATCH_STRATEGIES)}")
        self._settings_and_target(model, input_shape, num_classes, model_seed, model_weights)

    #: the server this attack reads, and its ``--data.server`` name
    server_kind: type = object
    server_name = ""

    def check_observation(self, observation: Observation) -> None:
        super().check_observation(observation)
        _server(observation, self.server_kind, self.server_name, self.server_name)

    def _fill(self, observation: Observation, rows: list[Tensor]) -> Tensor:
        """Every victim's candidates ``[n_v, D]`` in the batch's slots ``[V, B, *input_shape]``, the rest
        filler: the middle of the data range. Filler is no reconstruction: the notes say how many slots
        hold it, and a victim with no candidate at all is a failed result (``unread``), not ``B`` identical
        rows reported ok."""
        V, B, shape = observation.num_victims, observation.batch_size, observation.input_shape
        lo, hi = observation.data_range
        x = torch.full((V, B, *shape), (lo + hi) / 2, device=self.device)
        empty, partial = [], []
        for v, found in enumerate(rows):
            n = min(B, found.shape[0])
            x[v, :n] = found[:n].view(n, *shape)
            if n == 0:
                self.unread[v] = True
                empty.append(v)
            elif n < B:
                partial.append((v, B - n))
        what = "candidate rows" if isinstance(self, TrapWeightAttack) else "bins holding an input"
        if empty:
            self.notes.append(f"{len(empty)} of {V} victims failed: no {what} found in the update (victims "
                              f"{_listed(empty)}), nothing was read")
        if partial:
            slots = sum(k for _, k in partial)
            self.notes.append(f"{slots} of {len(partial) * B} slots in {len(partial)} of {V} victims hold filler (the middle "
                              f"of the data range; fewer {what} than inputs): not reconstructions (victims "
                              f"{_listed([v for v, _ in partial])})")
        return x


class ImprintAttack(_MaliciousAttack):
    """Read every input alone in its bin off a malicious server's imprint module (module docstring).

    Args:
        model: the global model (the server inserts the imprint module in front of it): a built-in
            name or any ``torch.nn.Module`` by import path, as for the other attacks.
        input_shape, num_classes: linked from the data by the CLI.
        model_seed, model_weights: the global model's weights.
        labels: the batch label restoration: ``bias_count``, ``weight_count``, ``yin`` or ``ilrg``.
    """

    server_kind, server_name = ImprintServer, "imprint"

    def __init__(self, model: Union[nn.Module, str] = "lenet", input_shape: Sequence[int] = (1, 28, 28),
                 num_classes: int = 10, model_seed: int = 1234, model_weights: Optional[str] = None,
                 labels: Literal["bias_count", "weight_count", "yin", "ilrg"] = "bias_count") -> None:
        super().__init__(model, input_shape, num_classes, model_seed, model_weights, labels)

    def solve(self, observation: Observation) -> tuple[Tensor, Tensor, Tensor]:
        server = _server(observation, ImprintServer, "imprint", "imprint")
        grads = observation.gradient_estimate()
        dW = grads[f"{server.layer}.weight"].to(self.device)  # [V, K, D], cumulative over the bins
        db = grads[f"{server.layer}.bias"].to(self.device)  # [V, K]
        dW_bin = dW - torch.cat([dW[:, 1:], torch.zeros_like(dW[:, :1])], dim=1)
        db_bin = db - torch.cat([db[:, 1:], torch.zeros_like(db[:, :1])], dim=1)
        size = db_bin.abs()
        holds = size > MIN_RELATIVE_BIAS * size.amax(dim=1, keepdim=True)
        rows, counts = [], []
        for v in range(observation.num_victims):
            bins = holds[v].nonzero().flatten()
            bins = bins[size[v, bins].argsort(descending=True)]  # the largest first
            rows.append(dW_bin[v, bins] / db_bin[v, bins, None])
            counts.append(len(bins))
        B = observation.batch_size
        exact = torch.tensor([c == B for c in counts], dtype=torch.bool) & (observation.client is None)
        return self._fill(observation, rows), self.restored_labels(observation), exact

    def describe(self) -> str:
        return "imprint-module read-out (Robbing the Fed, closed form)"


class TrapWeightAttack(_MaliciousAttack):
    """Read the inputs off a malicious server's trap weights (module docstring).

    Args:
        model: the global model, whose fully connected first layer holds the trap weights (the built-in
            ``mlp``, or any ``torch.nn.Module`` by import path).
        input_shape, num_classes: linked from the data by the CLI.
        model_seed, model_weights: the global model's weights (the server replaces the first layer's).
        labels: the batch label restoration: ``bias_count``, ``weight_count``, ``yin`` or ``ilrg``.
    """

    server_kind, server_name = TrapWeightServer, "trap_weights"

    def __init__(self, model: Union[nn.Module, str] = "mlp", input_shape: Sequence[int] = (1, 28, 28),
                 num_classes: int = 10, model_seed: int = 1234, model_weights: Optional[str] = None,
                 labels: Literal["bias_count", "weight_count", "yin", "ilrg"] = "bias_count") -> None:
        super().__init__(model, input_shape, num_classes, model_seed, model_weights, labels)

    def solve(self, observation: Observation) -> tuple[Tensor, Tensor, Tensor]:
        server = _server(observation, TrapWeightServer, "trap_weights", "trap_weights")
        grads = observation.gradient_estimate()
        dW = grads[f"{server.layer}.weight"].to(self.device)  # [V, H, D]
        db = grads[f"{server.layer}.bias"].to(self.device)  # [V, H]
        lo, hi = observation.data_range
        slack = 1e-3 * (hi - lo)
        rows, certified = [], []
        for v in range(observation.num_victims):
            size = db[v].abs()
            fired = (size > MIN_RELATIVE_BIAS * size.max()).nonzero().flatten()
            cand = dW[v, fired] / db[v, fired, None]  # [n, D]
            cand = cand[((cand >= lo - slack) & (cand <= hi + slack)).all(dim=1)]
            groups = self._groups(cand)
            found = torch.stack([cand[g].mean(dim=0) for g in groups]) if groups else cand[:0]
            rows.append(found)
            top = found[:observation.batch_size]
            gaps = torch.cdist(top, top, compute_mode="donot_use_mm_for_euclid_dist")
            gaps.fill_diagonal_(float("inf"))
            distinct = bool((gaps > DISTINCT_TOLERANCE * top.norm(dim=1).clamp_min(1e-12)[:, None]).all())
            certified.append(sum(len(g) >= 2 for g in groups[:observation.batch_size]) if distinct else 0)
        B = observation.batch_size
        exact = torch.tensor([c == B for c in certified], dtype=torch.bool) & (observation.client is None)
        return self._fill(observation, rows), self.restored_labels(observation), exact

    @staticmethod
    def _groups(cand: Tensor) -> list[Tensor]:
        """Candidates that agree to :data:`DUPLICATE_TOLERANCE`, grouped: the largest group first."""
        if cand.shape[0] == 0:
            return []
        scale = cand.norm(dim=1).clamp_min(1e-12)
        distance = torch.cdist(cand, cand, compute_mode="donot_use_mm_for_euclid_dist")  # exact, not |a|^2 - 2ab + |b|^2
        same = distance <= DUPLICATE_TOLERANCE * torch.minimum(scale[:, None], scale[None, :])
        same.fill_diagonal_(True)  # every candidate is in its own group: the loop below ends
        left = torch.ones(cand.shape[0], dtype=torch.bool, device=cand.device)
        groups = []
        while left.any():
            counts = (same & left[None, :] & left[:, None]).sum(dim=1)
            first = int(counts.argmax())
            members = (same[first] & left).nonzero().flatten()
            groups.append(members)
            left[members] = False
        return groups

    def describe(self) -> str:
        return "trap-weight read-out (When the Curious Abandon Honesty, closed form)"
