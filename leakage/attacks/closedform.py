"""Closed-form attacks: solved from the shared update directly, with no search.

A :class:`ClosedFormAttack` is an :class:`~leakage.attacks.family.Attack` like the optimisation attacks,
run by the same Trainer (``leakage fit``, the Python API, the sweep, several processes): it has no
optimizer, and its first training step solves every problem at once and ends the run (a budget of
one step; a larger ``max_steps`` is not used). Its result is the same record: reconstructions
``[P, B, *input_shape]``, labels ``[P, B]``, and as each problem's score the distances between the
observed update and the update the reconstruction gives (the residual: near 0 when the solution
explains the update), so the report, the metrics and the sweep read it as they read any attack.
One problem per victim (``restarts`` is 1): a closed form has no random start.

**Exact only where proven.** A victim is reported exact (:meth:`ClosedFormAttack.exact`) only when its
recovered batch, with its labels paired to the batch's slots, reproduces the WHOLE observed update
(every layer, computed as the client computed it) to a relative residual
``|g(x, y) - g_obs| / |g_obs| <=`` :data:`CERTIFIED_RESIDUAL`, and the attack's own read-out filled every
slot (no filler). The second condition matters: an input that no first-layer unit fires for leaves the
same update whatever it is, so a filler slot can reproduce the update without being the input
(measured: trap weights of scale 0.5 on 4 MNIST images read 1 image and reproduce the update to 3e-8).
A statistic of one layer (a bin count, a per-row ratio) proves nothing: noise, masks, top-k or
clipping change the downstream layers too, so a defended update is not reproduced and is never
certified; nor is an all-zero update. Labels restored as a multiset (:mod:`leakage.attacks.labels`) are paired to the slots by the last
layer before the residual is taken (:func:`pair_labels`); a wrong pairing only fails the certificate.

A subclass builds its target in ``__init__`` (:meth:`~leakage.attacks.family.Attack._settings_and_target`)
and implements :meth:`solve`.
"""

from __future__ import annotations

import time
from typing import Optional

import torch
from torch import Tensor, nn

from leakage.federated.client import client_view, per_problem_gradients
from leakage.records import Observation
from leakage.attacks.family import Attack
from leakage.federated.fedavg import per_problem_updates, schedules
from leakage.federated.trainable import shared_names
from leakage.attacks.labels import label_gradients, last_linear, observed_labels
from leakage.engine.losses import gradient_distance, squared_norms
from leakage.engine.precision import full_precision

#: a victim is certified exact when every slot of its batch was read off the update (no filler) and the
#: recovered batch reproduces the whole observed update to this relative residual ``|g(x, y) - g_obs| / |g_obs|``.
#: Measured (FedSGD, float32, CPU): clean runs whose batch comes back give at most 3.1e-7 (imprint, 256
#: bins, 8 or 16 MNIST images; trap weights 0.7 on 4 or 8; analytic, one record); the mildest defenses
#: measured give 1.0e-3 (clipping to 0.999 of the update's norm), noise of sigma 1e-6 gives 8.6e-2, top-k
#: 0.3 3.4e-2, masked secure aggregation 1.0, noise 0.1 0.95.
CERTIFIED_RESIDUAL = 1e-4
CERTIFICATE = ("every slot read off the update, and the recovered batch reproduces the whole observed update to "
               f"relative residual <= {CERTIFIED_RESIDUAL:g}")


def pair_labels(net: nn.Module, layer_name: str, x: Tensor, labels: Tensor, weight_grad: Tensor,
                bias_grad: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """One victim's restored labels ``[B]`` (a multiset, in any order) paired to the slots of its recovered
    batch ``x`` ``[B, *input_shape]``, from the last layer's batch-mean gradient (``weight_grad`` ``[K, F]``,
    ``bias_grad`` ``[K]`` or None).

    With cross-entropy averaged over the batch, ``dW = (P - Y)^T A / B`` for the softmax outputs ``P``
    ``[B, K]`` and the last layer's inputs ``A`` ``[B, F]`` of ``x`` (both computable once ``x`` is known),
    and ``db = (P - Y)^T 1 / B``; so ``Y^T [A, 1] = P^T [A, 1] - B [dW, db]``, which least squares solves
    for the one-hot rows ``Y`` ``[B, K]``. Returns ``(paired, argmax)``: the multiset assigned to the
    slots by the Hungarian algorithm on ``Y`` (:func:`scipy.optimize.linear_sum_assignment`), and each
    slot's most likely class. When the model's output is not that layer's output, ``labels`` as given."""
    from scipy.optimize import linear_sum_assignment

    B = x.shape[0]
    seen: list[tuple[Tensor, Tensor]] = []
    layer = net.get_submodule(layer_name)
    hook = layer.register_forward_hook(lambda m, inp, out: seen.append((inp[0], out)))
    try:
        logits = net(x)
    finally:
        hook.remove()
    if len(seen) != 1 or seen[0][1].shape != logits.shape or not torch.equal(seen[0][1], logits):
        return labels, labels
    A = seen[0][0].flatten(1).double()
    P = torch.softmax(logits.double(), dim=1)
    M = P.T @ A - B * weight_grad.double().to(A.device)  # Y^T A, [K, F]
    if bias_grad is not None:
        A = torch.cat([A, torch.ones(B, 1, dtype=A.dtype, device=A.device)], dim=1)
        M = torch.cat([M, (P.sum(0) - B * bias_grad.double().to(A.device))[:, None]], dim=1)
    Y = torch.linalg.lstsq(A.T.cpu(), M.T.cpu(), driver="gelsd").solution  # [B, K]
    Y = torch.nan_to_num(Y, nan=0.0, posinf=0.0, neginf=0.0)
    given = labels.cpu()
    slots, entries = linear_sum_assignment((-Y[:, given]).numpy())
    paired = given[torch.as_tensor(entries)[torch.as_tensor(slots).argsort()]]
    return paired.to(labels.device), Y.argmax(dim=1).to(labels.device)


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
        a batch restoration of :mod:`leakage.attacks.labels`), from the update as batch-mean gradients."""
        return observed_labels(self.target, label_gradients(observation), observation.batch_size,
                               observation.input_shape, self.hparams.labels, observation.data_range,
                               notes=self.notes)

    #: what a victim reported exact is proven to satisfy (reports state it)
    certificate = CERTIFICATE

    def solve(self, observation: Observation) -> tuple[Tensor, Tensor, Tensor]:
        """Every victim's reconstruction ``[V, B, *input_shape]``, labels ``[V, B]`` (a multiset per victim
        is enough: they are paired to the slots before the certificate) and whether the attack's read-out
        leaves it possibly exact ``[V]`` (False where it knows better; True lets the residual decide)."""
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
        #: victims whose update gave the attack nothing to read ``[V]`` (set by :meth:`solve`, with a note):
        #: failed results, whatever their slots hold (filler, which a kind can still decode)
        self.unread = torch.zeros(V, dtype=torch.bool)
        #: each victim's relative residual of the whole update ``[V]`` (NaN until solved)
        self.relative_residual = torch.full((V,), float("nan"))
        self._evaluation = None
        self.problem_losses = None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return _Solved()

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        if self._evaluation is None:
            start = time.perf_counter()
            with full_precision(), torch.no_grad():
                x, y, possible = self.solve(self.observation)
            x, y = x.to(self.device), y.to(self.device)
            with full_precision():
                y, self._evaluation, self.relative_residual = self._certify(x, y)
            self.solve_seconds = time.perf_counter() - start
            self.dummy_data, self.fixed_labels = x, y
            self.problem_losses = self._evaluation["loss"]
            self.failed = (~torch.isfinite(x.flatten(1)).all(dim=1) | ~torch.isfinite(self.problem_losses)
                           | self.unread.to(x.device))
            self._exact = (possible.cpu().bool() & ~self.failed.cpu()
                           & (self.relative_residual.cpu() <= CERTIFIED_RESIDUAL))
        self.optimizers().step()  # counted as the attack's one step
        self.trainer.should_stop = True  # solved: the run ends after this step

    def _certify(self, x: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """The labels ``[V, B]``, the residuals (:meth:`residuals`) with them and the relative residual ``[V]``
        of the whole update, which decides the certificate (module docstring).

        The labels as restored (a multiset per victim) are tried first, then two pairings to the slots
        (:func:`pair_labels`): the restored multiset assigned to the slots, then each slot's most likely
        class. A victim keeps the first that reproduces the update to :data:`CERTIFIED_RESIDUAL` (its labels
        are then proven, slot by slot), else its labels as restored and their residual."""
        obs = self.observation
        evaluation = self.residuals(x, labels)
        rel = self._relative(evaluation)
        V, B = labels.shape[0], labels.shape[1] if labels.dim() > 1 else 1
        if V == 0 or B == 1 or bool((rel <= CERTIFIED_RESIDUAL).all()):  # nothing left to pair
            return labels, evaluation, rel
        try:
            name, _ = last_linear(self.target)
        except ValueError:  # no linear classifier: the labels stay as restored
            return labels, evaluation, rel
        grads = label_gradients(obs)
        if f"{name}.weight" not in grads:  # a client that did not train the head: nothing to pair the labels with
            return labels, evaluation, rel
        bias = grads.get(f"{name}.bias")
        net = client_view(self.target.to(x.device), obs.client_mode).to(x.device)
        paired, argmax = labels.clone(), labels.clone()
        for v in range(V):
            if torch.isfinite(x[v]).all() and not rel[v] <= CERTIFIED_RESIDUAL:
                paired[v], argmax[v] = pair_labels(net, name, x[v], labels[v], grads[f"{name}.weight"][v],
                                                   None if bias is None else bias[v])
        for candidate in (paired, argmax):  # the restored multiset paired first
            if torch.equal(candidate, labels):  # nothing new to try: the same residuals
                continue
            trial = self.residuals(x, candidate)
            rel_trial = self._relative(trial)
            better = (rel_trial <= CERTIFIED_RESIDUAL) & ~(rel <= CERTIFIED_RESIDUAL)
            labels = torch.where(better[:, None].to(labels.device), candidate, labels)
            evaluation = {k: torch.where(better.to(v.device), trial[k], v) for k, v in evaluation.items()}
            rel = torch.where(better, rel_trial, rel)
        return labels, evaluation, rel

    def _relative(self, evaluation: dict[str, Tensor]) -> Tensor:
        """``|g(x, y) - g_obs| / |g_obs|`` ``[V]`` from a residual's squared l2 distance."""
        shared = self.observation.gradient_estimate()
        names = shared_names([n for n, _ in self.target.named_parameters()], shared)  # what the client shared
        observed = squared_norms([shared[n].double() for n in names])
        l2, observed = evaluation["loss"].double().cpu(), observed.cpu()
        # an all-zero update proves nothing about its batch: NaN, never certified
        return torch.where(observed > 0, l2.clamp_min(0).sqrt() / observed.sqrt().clamp_min(1e-300),
                           float("nan")).float()

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
        shared = obs.gradient_estimate()  # FedAvg: pseudo-gradient units, as per_problem_updates gives
        names = shared_names([n for n, _ in target.named_parameters()], shared)  # what the client shared
        observed = [shared[n].to(x.device) for n in names]
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
