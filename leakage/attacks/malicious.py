"""Closed-form attacks of a malicious server: they read the inputs off the rows its change planted.

The two attacks, one file each (:mod:`leakage.attacks.imprint`, :mod:`leakage.attacks.trap_weights`),
share what is here: the server check, the batch's slots filled, the label restoration. Both need the
observation's server (:mod:`leakage.federated.server`), which the attacker is: the change it made is
public to it, and the clients trained the changed model.

Slots left over (fewer bins or candidates than inputs) hold filler, the middle of the data range: not a
reconstruction, so the report's notes count them, they are never certified exact, and a victim with no
candidate at all (trap weights on a table whose encoded rows leave the data range, say) is a failed
result, not ``B`` identical filler rows. Labels
come from a batch label restoration of the last layer (:mod:`leakage.attacks.labels`); FedAvg updates are
read in pseudo-gradient units. Under secure aggregation the aggregate of ``K`` clients is one
update of ``K x B`` inputs, and both attacks read it the same way (Robbing the Fed's point);
masked updates (``target: masked``) hide every row.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from leakage.attacks.closedform import ClosedFormAttack
from leakage.records import Observation
from leakage.attacks.labels import BATCH_STRATEGIES

#: a bin or row holds an input when its bias gradient is above this fraction of the largest
MIN_RELATIVE_BIAS = 1e-5


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
    #: what the attack reads a batch's slots from, as the notes name it
    candidates = ""

    def check_observation(self, observation: Observation) -> None:
        super().check_observation(observation)
        self._server(observation)

    def _server(self, observation: Observation):
        """The observation's server, which must be this attack's kind (else a one-line error)."""
        server = observation.server
        if not isinstance(server, self.server_kind):
            given = "an honest-but-curious server" if server is None or not server.malicious else server.describe()
            raise ValueError(f"the {self.server_name} attack reads what a malicious server planted: run it with "
                             f"--data.server {self.server_kind.__name__} (the observation has {given})")
        return server

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
        what = self.candidates
        if empty:
            self.notes.append(f"{len(empty)} of {V} victims failed: no {what} found in the update (victims "
                              f"{_listed(empty)}), nothing was read")
        if partial:
            slots = sum(k for _, k in partial)
            self.notes.append(f"{slots} of {len(partial) * B} slots in {len(partial)} of {V} victims hold filler (the middle "
                              f"of the data range; fewer {what} than inputs): not reconstructions (victims "
                              f"{_listed([v for v, _ in partial])})")
        return x
