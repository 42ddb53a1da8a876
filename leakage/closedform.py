"""Closed-form attacks: solved from the shared update directly, with no search.

A :class:`ClosedFormAttack` is an :class:`~leakage.family.Attack` like the optimisation attacks,
run by the same Trainer (``leakage fit``, the Python API, the sweep, several processes): it has no
optimizer, and its first training step solves every problem at once and ends the run (a budget of
one step; a larger ``max_steps`` is not used). Its result is the same record: reconstructions
``[P, B, *input_shape]``, labels ``[P, B]``, and as each problem's score the distances between the
observed update and the update the reconstruction gives (the residual: near 0 when the solution
explains the update), so the report, the metrics and the sweep read it as they read any attack.
One problem per victim (``restarts`` is 1): a closed form has no random start.

A subclass builds its target in ``__init__`` (:meth:`~leakage.family.Attack._settings_and_target`)
and implements :meth:`solve`.
"""

from __future__ import annotations

import time
from typing import Optional

import torch
from torch import Tensor

from .client import client_view, per_problem_gradients
from .data import Observation
from .family import Attack
from .fedavg import per_problem_updates, schedules
from .labels import label_gradients, observed_labels
from .losses import gradient_distance
from .precision import full_precision


class _Solved(torch.optim.Optimizer):
    """The optimizer of a closed-form attack: its one step does nothing (the solution is computed,
    not searched); it lets the Trainer count the step as it counts an optimisation attack's."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(0, requires_grad=True)], {})

    def step(self, closure=None) -> None:
        return None


class ClosedFormAttack(Attack):
    """An attack that solves every problem in its first step (see the module docstring)."""

    family = "closed form"

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False  # nothing to optimise: training_step solves
        #: seconds the solution took (the closed form and its residual), once solved
        self.solve_seconds: Optional[float] = None
        self._evaluation: Optional[dict[str, Tensor]] = None
        self._exact = torch.zeros(0, dtype=torch.bool)

    def restored_labels(self, observation: Observation) -> Tensor:
        """Every victim's labels ``[V, B]`` by the attack's ``labels`` setting (iDLG for one record, or
        a batch restoration of :mod:`leakage.labels`), from the update as batch-mean gradients."""
        return observed_labels(self.target, label_gradients(observation), observation.batch_size,
                               observation.input_shape, self.hparams.labels, observation.data_range)

    def solve(self, observation: Observation) -> tuple[Tensor, Tensor, Tensor]:
        """Every victim's reconstruction ``[V, B, *input_shape]``, labels ``[V, B]`` and whether it is
        exact ``[V]`` (certified by the observed update itself, to float32 rounding)."""
        raise NotImplementedError

    # -------------------------------------------------------------- set-up
    def _attach(self, observation: Observation) -> None:
        self.observation = observation
        V, B = observation.num_victims, observation.batch_size
        # unsolved until the first step: NaN reconstructions
        self.register_buffer("dummy_data", torch.full((V, B, *observation.input_shape), float("nan")), persistent=False)
        self.register_buffer("fixed_labels", torch.zeros(V, B, dtype=torch.long), persistent=False)
        self.failed = torch.zeros(V, dtype=torch.bool)
        self._exact = torch.zeros(V, dtype=torch.bool)
        self._evaluation = None
        self.problem_losses = None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return _Solved()

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        if self._evaluation is None:
            start = time.perf_counter()
            with full_precision(), torch.no_grad():
                x, y, exact = self.solve(self.observation)
            x, y = x.to(self.device), y.to(self.device)
            with full_precision():
                self._evaluation = self.residuals(x, y)
            self.solve_seconds = time.perf_counter() - start
            self.dummy_data, self.fixed_labels, self._exact = x, y, exact.cpu()
            self.problem_losses = self._evaluation["loss"]
            self.failed = ~torch.isfinite(x.flatten(1)).all(dim=1) | ~torch.isfinite(self.problem_losses)
        self.optimizers().step()  # counted as the attack's one step
        self.trainer.should_stop = True  # solved: the run ends after this step

    def residuals(self, x: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The l2 and cosine distances ``[P]`` between the observed updates and those of ``(x, labels)``,
        computed as the client computed its update (FedSGD or FedAvg, train or eval mode); ``loss``
        is the l2 distance."""
        obs = self.observation
        if x.shape[0] == 0:
            empty = torch.zeros(0, device=x.device)
            return {"loss": empty, "grad_l2": empty, "grad_cosine": empty}
        target = self.target.to(x.device)
        net = client_view(target, obs.client_mode).to(x.device)
        clean = torch.nan_to_num(x)  # a failed solution gives a NaN residual, not an error
        if obs.client is None:
            grads = per_problem_gradients(target, clean, labels, forward=net)
        else:
            sched = schedules(obs.client, obs.batch_size, obs.update_keys).to(x.device)
            grads = per_problem_updates(target, clean, labels, obs.client, sched, forward=net)
        names = [n for n, _ in target.named_parameters()]
        observed = [obs.gradients[n].to(x.device) for n in names]
        mine = [grads[n].detach() for n in names]
        nan = torch.where(torch.isfinite(x.flatten(1)).all(dim=1), 0.0, float("nan"))
        l2 = gradient_distance(mine, observed, "l2") + nan
        return {"loss": l2, "grad_l2": l2, "grad_cosine": gradient_distance(mine, observed, "cosine") + nan}

    # ------------------------------------------------------------- results
    def recovered_labels(self) -> Tensor:
        return self.fixed_labels

    def final_evaluation(self) -> dict[str, Tensor]:
        if self._evaluation is None:
            raise RuntimeError("the closed-form attack has not run: fit it first (one step solves it)")
        return dict(self._evaluation)

    def exact(self) -> Tensor:
        return self._exact.clone()
