"""The class-fishing attack of a malicious server (:class:`leakage.federated.server.FishingServer`).

:class:`FishingAttack` (Wen et al., "Fishing for User Data in Large-Batch Federated Learning via
Gradient Magnification", ICML 2022): the server zeroed the classifier's rows of every class but the
target and gave them a large bias, so the update of every layer below the classifier is that of the
batch's target-class inputs alone, divided by the batch size ``B``. The attack is the optimisation
attack (:class:`leakage.attacks.gradient_inversion.GradientInversion`) on that part of the update,
times ``B``, as the update of one input whose label is the target class: whatever the batch size, it
inverts one input's gradient.

What the update proves, and the attack reads before it starts: the classifier's bias gradient counts
the batch's inputs of each class (every input gives the other classes probability ``1 / (K - 1)`` and
the target about 0, so ``n_c = B (1 / (K - 1) - db_c)`` and ``n_t = -B db_t``, rounded: exact when the
multiplier is large, an estimate when the target's probability is not negligible). A victim with no input
of the target class has nothing to fish: its result is failed. With two or more, the fished gradient is
their mean, and the reconstruction a blend of them (the notes say so; Wen et al.'s feature fishing,
which splits them, is not implemented). The other ``B - 1`` slots of the batch hold filler, the middle
of the data range: not reconstructions (the notes count them); their labels are the counted ones.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence, Union

from leakage.attacks.settings import lazy_instance  # jsonargparse's, without its stack walk
import torch
from torch import Tensor, nn

from leakage.attacks.gradient_inversion import GradientInversion
from leakage.attacks.settings import LBFGS, Budget, Dummies, Objective, Optimizer
from leakage.federated.server import FishingServer
from leakage.records import Observation


class FishingAttack(GradientInversion):
    """Invert the gradient of the one input a :class:`~leakage.federated.server.FishingServer` fished
    out of the batch (module docstring): the optimisation attack on a batch of one, its label the
    target class, matching every layer but the classifier.

    Args:
        model: the global model (the server changes its classifier): a built-in name or any
            ``torch.nn.Module`` by import path, as for :class:`GradientInversion`.
        input_shape, num_classes: linked from the data by the CLI.
        model_seed, model_weights: the global model's weights.
        objective, optimizer, dummies, budget: as for :class:`GradientInversion` (the classifier is
            left out of the distance besides any ``objective.exclude``).
    """

    def __init__(
        self,
        model: Union[nn.Module, str] = "lenet",
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        model_seed: int = 1234,
        model_weights: Optional[str] = None,
        objective: Objective = lazy_instance(Objective),
        optimizer: Optimizer = lazy_instance(LBFGS),
        dummies: Dummies = lazy_instance(Dummies),
        budget: Budget = lazy_instance(Budget),
    ) -> None:
        super().__init__(model, input_shape, num_classes, model_seed, model_weights, objective, "known", optimizer,
                         dummies, budget)
        self._batch_labels: Optional[Tensor] = None  # [V, B]: the counted labels, the target's first

    def check_observation(self, observation: Observation) -> None:
        server = observation.server
        if not isinstance(server, FishingServer):
            given = "an honest-but-curious server" if server is None or not server.malicious else server.describe()
            raise ValueError("the fishing attack inverts what a fishing server isolated: run it with --data.server "
                             f"FishingServer (the observation has {given})")
        if observation.client is not None:
            raise ValueError("the fishing attack inverts a FedSGD update (one gradient): use --data.client FedSGD")

    def _attach(self, observation: Observation) -> None:
        server: FishingServer = observation.server
        B, K, t = observation.batch_size, observation.num_classes, server.target_class
        self.param_names = [n for n in self.param_names if not n.startswith(server.layer + ".")]
        if not self.param_names:
            raise ValueError("the fishing attack matches the layers below the classifier: the model has none")
        db = observation.gradients[f"{server.layer}.bias"].double().cpu()  # [V, K]
        share = torch.full((K,), 1.0 / (K - 1), dtype=torch.float64)
        share[t] = 0.0
        counts = self._counts(B * (share - db), B)  # [V, K]
        V = observation.num_victims
        fished = replace(observation, batch_size=1, labels=torch.full((V, 1), t, dtype=torch.long),
                         gradients={k: v * B for k, v in observation.gradients.items()})
        super()._attach(fished)
        self.observation = observation  # what the reports read: the batch the client shared, as it was
        labels = []
        for v in range(V):
            others = counts[v].clone()
            if others[t] == 0:  # nothing fished (a failed result): the counted labels as they are
                labels.append(torch.repeat_interleave(torch.arange(K), others)[:B])
                continue
            others[t] -= 1  # the fished input is slot 0
            labels.append(torch.cat([torch.tensor([t]), torch.repeat_interleave(torch.arange(K), others)])[:B])
        self._batch_labels = torch.stack(labels).to(self.failed.device) if V else torch.zeros(0, B, dtype=torch.long)
        none = (counts[:, t] == 0).tolist()
        several = [(v, int(counts[v, t])) for v in range(V) if counts[v, t] > 1]
        R = self.dummies.restarts
        for v, empty in enumerate(none):
            if empty:
                self.failed[v * R:(v + 1) * R] = True
        if any(none):
            self.notes.append(f"{sum(none)} of {V} victims failed: their update holds no input of class {t} (the "
                              "classifier's bias gradient counts none), nothing to fish")
        if several:
            self.notes.append(f"{len(several)} of {V} victims hold several inputs of class {t} (victim {several[0][0]}: "
                              f"{several[0][1]}): the fished gradient is their mean, the reconstruction a blend")
        if B > 1:
            self.notes.append(f"{B - 1} of {B} slots of each victim hold filler (the middle of the data range): "
                              f"fishing recovers the input of class {t}, slot 0")

    @staticmethod
    def _counts(estimate: Tensor, total: int) -> Tensor:
        """Class counts ``[V, K]`` summing to ``total``: the estimate's floors, then one more for the
        largest remainders."""
        estimate = estimate.clamp_min(0)
        counts = estimate.floor().long()
        for v in range(counts.shape[0]):
            short = total - int(counts[v].sum())
            if short > 0:
                counts[v, (estimate[v] - counts[v]).topk(min(short, counts.shape[1])).indices] += 1
            while int(counts[v].sum()) > total:
                counts[v, int(counts[v].argmax())] -= 1
        return counts

    def reconstruction(self) -> Tensor:
        """The fished input in slot 0 of each problem, filler (the middle of the data range) in the
        other ``B - 1``: ``[P, B, *sample_shape]``."""
        fished = super().reconstruction()
        B = self.observation.batch_size
        lo, hi = self.observation.data_range
        filler = torch.full((fished.shape[0], B - 1, *fished.shape[2:]), (lo + hi) / 2, device=fished.device)
        return torch.cat([fished, filler.to(fished.dtype)], dim=1)

    def recovered_labels(self) -> Tensor:
        """The target class in slot 0, the other counted labels after it ``[P, B]``."""
        return self._batch_labels.repeat_interleave(self.dummies.restarts, dim=0)

    def describe(self) -> str:
        return "class fishing: gradient inversion of the fished input (Wen et al.)"
