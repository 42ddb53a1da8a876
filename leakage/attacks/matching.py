"""The matching objective of the optimisation attack: the dummies' update, computed as the client
computed it (its forward pass, its protocol, per problem), and its distance to the observed update,
plus the priors.

:class:`GradientMatching` is the part of :class:`leakage.attacks.gradient_inversion.GradientInversion`
that evaluates the objective: per problem or chunk by chunk, eager or compiled, over all problems
or a subset. It reads the attack's state (the target model, the observation, the observed
gradients registered as buffers, the settings objects) and holds none of its own.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from lightning.pytorch.utilities import rank_zero_warn
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.func import functional_call

from leakage.engine.losses import gradient_distance, squared_norms
from leakage.federated.client import client_view, per_problem_gradients
from leakage.federated.fedavg import per_problem_updates

#: on the CPU a model with at least this many parameters evaluates its problems one at a time unless
#: ``problems_per_chunk`` says otherwise: there, batching problems with ``vmap`` costs more than it
#: saves (CPU time per problem, 4 problems batched against one alone, one thread: 0.79M parameters
#: 1.01x, 1.2M 0.84x, 2.7M 1.47x, 6.6M 1.49x, ResNet-18's 11.2M 1.17x; docs/benchmarks.md, Compared with breaching)
SERIAL_PARAMETERS = 2_000_000


class GradientMatching:
    """The gradient-matching objective, mixed into the attack module (no state of its own)."""

    @property
    def compiled(self) -> bool:
        """Whether the objective is (to be) compiled (see ``compile``)."""
        setting = self.objective.compile
        if setting == "auto":
            return self.device.type == "cuda" and self._compiled is not False
        return setting == "on" and self._compiled is not False

    @property
    def fixed_shape(self) -> bool:
        """Whether iterations run with fixed shapes and no host round-trip (see ``fixed_shape``)."""
        if self.objective.fixed_shape is not None:
            return bool(self.objective.fixed_shape)
        return self.device.type == "cuda" or self.objective.compile == "on"

    def observed(self) -> list[Tensor]:
        return [getattr(self, f"observed_{i}") for i in range(len(self.param_names))]

    def observed_sq_norm(self) -> Tensor:
        """Each problem's squared norm of its observed gradient ``[P]``, the cosine distance's constant:
        computed once (per attach, device and dtype), not at every evaluation."""
        first = self.observed_0
        cached = self._observed_sq
        if cached is None or cached.device != first.device or cached.dtype != first.dtype:
            with torch.inference_mode(False), torch.no_grad():
                cached = self._observed_sq = squared_norms(self.observed())
        return cached

    def problems_at_once(self, device: Optional[torch.device] = None) -> Optional[int]:
        """The most problems one evaluation takes (None: all) on ``device`` (default: the module's):
        ``problems_per_chunk``, or by default 1 on the CPU for a model of at least
        :data:`SERIAL_PARAMETERS` parameters that is not compiled."""
        chunk = self.objective.problems_per_chunk
        device = self.device if device is None else torch.device(device)
        if (chunk is None and device.type == "cpu" and self.objective.compile != "on"
                and sum(p.numel() for p in self.target.parameters()) >= SERIAL_PARAMETERS):
            return 1
        return chunk

    @staticmethod
    def _chunks(P: int, idx: Optional[Tensor], chunk: int) -> list:
        """The problems ``idx`` (all ``P`` when None) in runs of at most ``chunk``: slices of
        consecutive problems when ``idx`` is None (views of the dummies and the observed gradients,
        no copies), index tensors otherwise."""
        if idx is None:
            return [slice(s, min(s + chunk, P)) for s in range(0, P, chunk)]
        return list(idx.split(chunk))

    def client_net(self, device: torch.device) -> nn.Module:
        """The client's forward pass as the observation says it ran (train or eval mode), sharing
        the target's parameters; BatchNorm in train mode keeps no running statistics, so the
        target's running buffers are never touched (:func:`leakage.federated.client.client_view`)."""
        net = self._client_net
        if net is None or self._client_net_device != device:
            mode = self.observation.client_mode if self.observation is not None else "train"
            net = self._client_net = client_view(self.target, mode).to(device)
            self._client_net_device = device
        return net

    def bn_prior(self, moments: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        """``R_BN`` per problem ``[P]``: distances of the dummy batch's BatchNorm input statistics to
        the target's running statistics, summed over layers."""
        total = 0.0
        for name, (mean, var) in moments.items():
            layer = self.target.get_submodule(name)
            total = total + (mean - layer.running_mean).norm(dim=-1) + (var - layer.running_var).norm(dim=-1)
        return total

    def _one_problem_gradients(self, x: Tensor, targets: Tensor, net: nn.Module) -> dict[str, Tensor]:
        """:func:`leakage.federated.client.per_problem_gradients` of one problem (``x`` ``[1, B, ...]``) through
        ``torch.autograd.grad`` instead of ``vmap(grad)``: the same gradient (to float32 rounding), and
        on ResNet-18 on one CPU thread 12% cheaper with its double backward (188 against 213 ms).
        The parameters are fresh detached leaves: the attack's backward, which asks only for the
        dummies' gradient (the chunked path of :meth:`matching_loss`), never computes theirs."""
        params = {k: v.detach().requires_grad_() for k, v in self.target.named_parameters()}
        buffers = {k: v.detach() for k, v in net.named_buffers()}
        graph = torch.is_grad_enabled()
        with torch.enable_grad():
            loss = F.cross_entropy(functional_call(net, (params, buffers), (x[0],)), targets[0])
            # allow_unused: a parameter the dummy does not reach (a text model's token embedding, which
            # an embedding dummy bypasses) has a zero gradient, as torch.func.grad gives it
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=graph, allow_unused=True)
        return {k: (torch.zeros_like(p) if g is None else g).unsqueeze(0) for (k, p), g in zip(params.items(), grads)}

    def problem_gradients(self, x: Tensor, targets: Tensor, net: nn.Module) -> dict[str, Tensor]:
        """Every problem's FedSGD update ``{name: [N, *shape]}`` of the dummies ``x`` ``[N, B, ...]`` (at least
        the matched parameters'): one problem through :meth:`_one_problem_gradients` when the problems
        run one at a time, else :func:`~leakage.federated.client.per_problem_gradients`."""
        if x.shape[0] == 1 and self.problems_at_once() == 1:
            return self._one_problem_gradients(x, targets, net)
        return per_problem_gradients(self.target, x, targets, forward=net)

    def _objective(self, x: Tensor, label_logits: Optional[Tensor], idx: Optional[Union[Tensor, slice]],
                   distance: Optional[str] = None, prior: bool = True) -> Tensor:
        """Objective of the problems ``idx`` (all when None; an index tensor or a slice) at dummies
        ``x`` and label logits."""
        return self._objectives(x, label_logits, idx, ((distance, prior),))[0]

    def _objectives(self, x: Tensor, label_logits: Optional[Tensor], idx: Optional[Union[Tensor, slice]],
                    terms: Sequence[tuple[Optional[str], bool]]) -> list[Tensor]:
        """The objective of the problems ``idx`` once per ``(distance, prior)`` of ``terms`` (distance
        None: the attack's), all from one evaluation of the per-problem gradients."""
        data_kind = self.kind if idx is None else self.kind.select(idx)  # a per-problem relaxation: these problems'
        dummy, x = x, data_kind.to_input(x)
        observed = self.observed()
        if label_logits is not None:
            targets = F.softmax(label_logits, dim=-1)
        else:
            targets = self.fixed_labels
        if idx is not None:
            observed = [o[idx] for o in observed]
            targets = targets if label_logits is not None else targets[idx]
        net = self.client_net(x.device)
        bn = any(prior for _, prior in terms) and self.objective.bn_weight > 0
        client = self.observation.client
        if client is not None:  # FedAvg: the client's local steps, simulated per problem
            sched = self.schedule if idx is None else self.schedule[idx]
            grads = per_problem_updates(self.target, x, targets, client, sched, forward=net)
        elif bn:
            grads, moments = per_problem_gradients(self.target, x, targets, forward=net, bn_layers=self._bn_layers)
        else:
            grads = self.problem_gradients(x, targets, net)
        mine = [grads[n] for n in self.param_names]
        norm = None
        if any((d or self.objective.distance) == "cosine" for d, _ in terms):
            norm = self.observed_sq_norm() if idx is None else self.observed_sq_norm()[idx]
        out = []
        for distance, prior in terms:
            kind = distance or self.objective.distance
            loss = gradient_distance(mine, observed, kind, norm if kind == "cosine" else None)
            if prior and bn:
                loss = loss + self.objective.bn_weight * self.bn_prior(moments)
            kind_prior = data_kind.prior(dummy, x, {"tv_weight": self.objective.tv_weight}) if prior else None
            if kind_prior is not None:
                loss = loss + kind_prior
            if prior and self.objective.group_weight > 0 and self.consensus is not None:
                target = self.consensus if idx is None else self.consensus[idx]
                loss = loss + self.objective.group_weight * (dummy - target).pow(2).flatten(1).mean(1)
            out.append(loss)
        return out

    @torch.no_grad()
    def update_consensus(self) -> None:
        """Group consistency: each restart's target is the mean of its victim's aligned restarts."""
        R = self.dummies.restarts
        x = self.dummy_data.detach()
        P, B = x.shape[:2]
        if P == 0:
            return
        groups = x.view(P // R, R, B, -1)
        current = self.dummy_labels.detach().argmax(dim=-1) if self.hparams.labels == "joint" else self.fixed_labels
        labels = current.view(P // R, R, B).cpu()
        perms = torch.empty(P // R, R, B, dtype=torch.long)  # restart r's slot for the first restart's slot i
        for v in range(P // R):
            for r in range(R):
                cost = torch.cdist(groups[v, 0], groups[v, r]).pow(2).cpu()
                cost = cost + 1e6 * (labels[v, 0][:, None] != labels[v, r][None, :])  # equal labels first
                rows, cols = linear_sum_assignment(cost.double().numpy())
                perms[v, r, torch.as_tensor(rows)] = torch.as_tensor(cols)
        perms = perms.to(x.device)
        aligned = torch.gather(groups, 2, perms[..., None].expand_as(groups))  # [V, R, B, D] in restart 0's order
        mean = aligned.mean(1, keepdim=True).expand_as(groups)
        target = torch.empty_like(groups).scatter_(2, perms[..., None].expand_as(groups), mean)
        self.consensus = target.view_as(x)

    def matching_loss(self, distance: Optional[str] = None, prior: bool = True, subset: Optional[Tensor] = None) -> Tensor:
        """Per-problem objective ``[P]``: gradient distance (plus the TV and group-consistency priors).

        With a boolean ``subset`` mask only those problems are evaluated (the others' rows of the
        result are NaN and receive no gradient); with :attr:`fixed_shape` every problem is
        evaluated and the others' rows are masked to NaN afterwards (no data-dependent shape). With
        :meth:`problems_at_once` below the problems evaluated, they are evaluated chunk by chunk and
        each chunk's graph is freed at once; the result's backward gives the same gradients as the
        unchunked one (to float32 rounding).
        """
        joint = self.hparams.labels == "joint"
        labels = self.dummy_labels if joint else None
        P = self.num_problems
        if subset is not None and self.fixed_shape:
            loss = self.matching_loss(distance, prior)
            return torch.where(subset, loss, torch.full_like(loss, float("nan")))
        idx = None if subset is None or bool(subset.all()) else subset.nonzero().squeeze(1)
        chunk = self.problems_at_once()
        n = P if idx is None else idx.numel()
        if n == 0:  # nothing left to evaluate (every problem failed): NaN rows, zero gradients
            return torch.full((P,), float("nan"), device=self.dummy_data.device) + self.dummy_data.flatten()[:0].sum()
        # one at a time (chunk 1) always takes the chunked path: its backward asks for the dummies' gradient
        # alone, which the parameters' leaves of _one_problem_gradients need
        if chunk is None or (n <= chunk and chunk > 1):
            if idx is None:
                if distance is None and prior and torch.is_grad_enabled() and self.compiled:
                    return self._compiled_objective(self.dummy_data, labels)
                return self._objective(self.dummy_data, labels, None, distance, prior)
            loss = self._objective(self.dummy_data[idx], labels[idx] if joint else None, idx, distance, prior)
            return torch.full((P,), float("nan"), device=loss.device, dtype=loss.dtype).index_put((idx,), loss)
        losses = torch.full((P,), float("nan"), device=self.dummy_data.device)
        if not torch.is_grad_enabled():  # nothing to back-propagate: each chunk's losses
            for c in self._chunks(P, idx, chunk):
                losses[c] = self._objective(self.dummy_data[c], labels[c] if joint else None, c, distance, prior)
            return losses
        # chunked: gradients per chunk now, a surrogate carries them to Lightning's backward
        params = [self.dummy_data] + ([self.dummy_labels] if joint else [])
        total = [torch.zeros_like(p) for p in params]
        for c in self._chunks(P, idx, chunk):
            leaves = [p.detach()[c].requires_grad_() for p in params]
            loss = self._objective(leaves[0], leaves[1] if joint else None, c, distance, prior)
            for t, g in zip(total, torch.autograd.grad(loss.nansum(), leaves)):
                t[c] = g
            losses[c] = loss.detach()
        # per problem, so each row's value is its loss and its gradient is its chunk's gradient
        surrogate = sum((p * t).flatten(1).sum(1) for p, t in zip(params, total))
        return losses + (surrogate - surrogate.detach())

    def _compiled_objective(self, x: Tensor, label_logits: Optional[Tensor]) -> Tensor:
        """The training objective of every problem through ``torch.compile``; eager if that fails."""
        self.client_net(x.device)  # built (a model copy) before capture, not inside the compiled graph
        if self.objective.distance == "cosine":
            self.observed_sq_norm()  # computed eagerly, once: the compiled graph reads it
        if self._compiled is None:
            mode = "reduce-overhead" if x.device.type == "cuda" else None
            self._compiled = torch.compile(self._objective, mode=mode, dynamic=False)
        try:
            # a copy: under CUDA graphs the output's memory is reused by the next replay
            return self._compiled(x, label_logits, None).clone()
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
            self._compiled = False
            first = (str(err).strip().splitlines() or [""])[0][:200]
            rank_zero_warn(f"torch.compile failed ({type(err).__name__}: {first}); the attack runs eagerly")
            return self._objective(x, label_logits, None)
