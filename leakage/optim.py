"""Optimizers that solve many independent problems at once.

Every parameter handed to these optimizers has a leading *problem* dimension ``P``: row ``p`` of
every parameter belongs to problem ``p``, and the closure returns a tensor of ``P`` losses whose
sum was back-propagated. Element-wise optimizers (Adam) are already independent per problem; L-BFGS
is not, so :class:`BatchedLBFGS` keeps every problem's curvature pairs, step length and stopping
tests apart.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer


class BatchedLBFGS(Optimizer):
    """L-BFGS over ``P`` independent problems, each exactly as :class:`torch.optim.LBFGS` runs it.

    With ``P = 1`` this follows ``torch.optim.LBFGS`` (same arguments, no line search) step by
    step. With ``P > 1`` each problem keeps its own history, ``H_diag``, step ``t``, iteration
    count and termination tests: a problem that has converged within a ``step()`` waits while the
    others iterate, so solving problems together gives what each gives alone.

    Every decision inside a step is a mask on the device: the per-problem tests of
    ``torch.optim.LBFGS`` (gradient and change tolerances, the curvature condition, the history
    ring) are ``torch.where`` selections and the two-loop recursion runs over all
    ``history_size`` slots with the pairs a problem does not have yet weighted by 0. Nothing in
    an iteration reads a value back to the host (no ``.item()``, ``bool()``, ``.tolist()`` or
    data-dependent shape), so an iteration has a fixed shape and can be captured as a graph.
    The only host decision left is ``early_exit``: with it (the default) the step ends as soon
    as no problem is active (one ``bool()`` per inner iteration, as ``torch.optim.LBFGS`` does);
    without it every step runs ``max_iter`` inner iterations, the inactive problems masked out.
    Both give the same iterates. With ``early_exit``, which reads flags back anyway, the two-loop
    recursion (an iteration's main cost) also runs only for the problems that use its direction,
    over the ages they have, so that problems that are done, or wait for others of the same run
    (a batched sweep's cells), cost next to nothing.

    A problem whose loss or gradient becomes non-finite is marked in :attr:`failed`, moved back to
    its last finite point and frozen; the others carry on untouched. A problem that a whole step
    left where it was is at a fixed point (the next step starts from the same point, gradient and
    history and does the same): :attr:`stalled` marks those, so a caller can stop when every
    problem is stalled or failed.

    The closure must return a tensor of shape ``[P]`` (the per-problem losses) after
    back-propagating their sum. Before each call :attr:`evaluating` holds the mask ``[P]`` of
    problems whose loss and gradient the step still needs; the others' rows are ignored.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1.0,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
        early_exit: bool = True,
    ) -> None:
        if line_search_fn is not None:
            raise ValueError(
                "BatchedLBFGS supports line_search_fn=None only (the setting DLG uses); "
                f"got {line_search_fn!r}"
            )
        if lr <= 0 or max_iter < 1 or history_size < 1:
            raise ValueError("BatchedLBFGS needs lr > 0, max_iter >= 1 and history_size >= 1")
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = dict(
            lr=lr,
            max_iter=max_iter,
            max_eval=max_eval,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            history_size=history_size,
            line_search_fn=line_search_fn,
        )
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("BatchedLBFGS doesn't support per-parameter options (parameter groups)")
        self._params: list[Tensor] = self.param_groups[0]["params"]
        sizes = {p.shape[0] for p in self._params}
        if len(sizes) != 1 or any(p.dim() < 1 for p in self._params):
            raise ValueError(
                "every parameter needs the same leading problem dimension, got shapes "
                f"{[tuple(p.shape) for p in self._params]}"
            )
        self.num_problems = sizes.pop()
        self.early_exit = early_exit

    # ------------------------------------------------------------------ helpers
    def _flat_grad(self) -> Tensor:
        P = self.num_problems
        views = []
        for p in self._params:
            g = p.grad
            views.append(p.new_zeros(P, p[0].numel()) if g is None else g.reshape(P, -1))
        return torch.cat(views, dim=1)

    def _flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(self.num_problems, -1) for p in self._params], dim=1)

    def _add(self, step: Tensor) -> None:
        """params[p] += step[p] for every problem (``step`` is [P, D])."""
        offset = 0
        with torch.no_grad():
            for p in self._params:
                n = p[0].numel()
                p.add_(step[:, offset : offset + n].view_as(p))
                offset += n

    def _restore(self, rows: Tensor, flat: Tensor) -> None:
        """params[p] = flat[p] where ``rows[p]`` (a fixed-shape select, no indexing by the mask)."""
        offset = 0
        with torch.no_grad():
            for p in self._params:
                n = p[0].numel()
                old = flat[:, offset : offset + n].view_as(p)
                p.copy_(torch.where(rows.view(-1, *([1] * (p.dim() - 1))), old, p))
                offset += n

    def _mask(self, name: str) -> Tensor:
        state = self.state["problems"]
        if name not in state:
            return torch.zeros(self.num_problems, dtype=torch.bool)
        return state[name].clone()

    @property
    def failed(self) -> Tensor:
        """Boolean mask ``[P]`` of problems that went non-finite and were frozen."""
        return self._mask("failed")

    @property
    def stalled(self) -> Tensor:
        """Boolean mask ``[P]`` of problems that the last step did not move (a fixed point)."""
        return self._mask("stalled")

    # --------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:  # type: ignore[override]
        group = self.param_groups[0]
        lr = float(group["lr"])
        max_iter = group["max_iter"]
        max_eval = group["max_eval"]
        tol_grad = group["tolerance_grad"]
        tol_change = group["tolerance_change"]
        H = group["history_size"]
        P = self.num_problems
        state = self.state["problems"]

        def evaluate(active: Tensor) -> tuple[Tensor, Tensor]:
            # problems outside `active` need not be evaluated: their rows are ignored
            self.evaluating = active
            with torch.enable_grad():
                losses = closure()
            losses = torch.as_tensor(losses).detach().reshape(-1)
            if losses.numel() != P:
                raise ValueError(
                    f"BatchedLBFGS closure must return {P} per-problem losses, got shape {tuple(losses.shape)}"
                )
            return losses.to(torch.float64), self._flat_grad()

        if "failed" in state:
            everyone = ~state["failed"]
        else:
            everyone = torch.ones(P, dtype=torch.bool, device=self._params[0].device)
        orig_losses, flat_grad = evaluate(everyone)
        loss = orig_losses.clone()
        device, dtype = flat_grad.device, flat_grad.dtype
        D = flat_grad.shape[1]

        if "n_iter" not in state:
            state["n_iter"] = torch.zeros(P, dtype=torch.long, device=device)
            state["func_evals"] = torch.zeros(P, dtype=torch.long, device=device)
            state["failed"] = torch.zeros(P, dtype=torch.bool, device=device)
            state["stalled"] = torch.zeros(P, dtype=torch.bool, device=device)
            state["d"] = torch.zeros(P, D, dtype=dtype, device=device)
            state["t"] = torch.zeros(P, dtype=dtype, device=device)
            # curvature pairs in a ring per problem: slot ptr-1 is the newest
            state["old_dirs"] = torch.zeros(H, P, D, dtype=dtype, device=device)
            state["old_stps"] = torch.zeros(H, P, D, dtype=dtype, device=device)
            state["ro"] = torch.zeros(H, P, dtype=dtype, device=device)
            state["ptr"] = torch.zeros(P, dtype=torch.long, device=device)
            state["num_old"] = torch.zeros(P, dtype=torch.long, device=device)
            state["H_diag"] = torch.ones(P, dtype=dtype, device=device)
            state["prev_flat_grad"] = torch.zeros(P, D, dtype=dtype, device=device)
            state["prev_loss"] = torch.zeros(P, dtype=torch.float64, device=device)

        n_iter_total, failed = state["n_iter"], state["failed"]
        d, t = state["d"], state["t"]
        old_dirs, old_stps, ro = state["old_dirs"], state["old_stps"], state["ro"]
        ptr, num_old, H_diag = state["ptr"], state["num_old"], state["H_diag"]
        prev_flat_grad, prev_loss = state["prev_flat_grad"], state["prev_loss"]
        problems = torch.arange(P, device=device)
        moved = torch.zeros(P, dtype=torch.bool, device=device)

        # a problem that is already non-finite at its current point fails right here
        failed |= everyone & ~(torch.isfinite(loss) & torch.isfinite(flat_grad).all(dim=1))
        state["func_evals"] += (~failed).long()
        active = ~failed & ~(flat_grad.abs().amax(dim=1) <= tol_grad)

        for n_iter in range(1, max_iter + 1):
            if self.early_exit and not bool(active.any()):
                break
            n_iter_total += active.long()
            first = active & (n_iter_total == 1)
            later = active & ~first

            # a new curvature pair for the problems whose step satisfies the curvature condition
            y = flat_grad - prev_flat_grad
            s = d * t[:, None]
            ys = torch.linalg.vecdot(y, s)
            accept = later & (ys > 1e-10)
            rows = ptr * P + problems  # each problem's slot ptr in the flattened [H * P, D] ring
            flat_dirs, flat_stps = old_dirs.view(H * P, D), old_stps.view(H * P, D)
            keep = ~accept[:, None]
            flat_dirs.index_copy_(0, rows, torch.where(keep, flat_dirs.index_select(0, rows), y))
            flat_stps.index_copy_(0, rows, torch.where(keep, flat_stps.index_select(0, rows), s))
            flat_ro = ro.view(H * P)
            flat_ro.index_copy_(0, rows, torch.where(accept, 1.0 / ys, flat_ro.index_select(0, rows)))
            ptr.copy_(torch.where(accept, (ptr + 1) % H, ptr))
            num_old.copy_(torch.where(accept, (num_old + 1).clamp(max=H), num_old))
            H_diag.copy_(torch.where(accept, ys / torch.linalg.vecdot(y, y), H_diag))
            # the first iteration of a problem starts from an empty history
            num_old.masked_fill_(first, 0)
            H_diag.masked_fill_(first, 1.0)

            if self.early_exit:
                # flags are read back anyway: the two-loop (the iteration's main cost, every history
                # slot of every row) only for the problems that use its result, so that problems
                # that are done, or wait for others in the same run, cost next to nothing
                idx = later.nonzero().squeeze(1)
                direction = torch.zeros_like(d)
                if idx.numel():
                    direction[idx] = self._two_loop(flat_grad, old_dirs, old_stps, ro, ptr, num_old, H_diag,
                                                    problems=idx, ages=int(num_old[idx].max()))
            else:
                direction = self._two_loop(flat_grad, old_dirs, old_stps, ro, ptr, num_old, H_diag)
            d.copy_(torch.where(first[:, None], -flat_grad, torch.where(later[:, None], direction, d)))

            prev_flat_grad.copy_(torch.where(active[:, None], flat_grad, prev_flat_grad))
            prev_loss.copy_(torch.where(active, loss, prev_loss))

            t_first = torch.clamp(1.0 / flat_grad.abs().sum(dim=1), max=1.0) * lr
            t.copy_(torch.where(active, torch.where(first, t_first, torch.full_like(t_first, lr)), t))

            gtd = torch.linalg.vecdot(flat_grad, d)
            active = active & ~(gtd > -tol_change)
            if self.early_exit and not bool(active.any()):
                break

            move = torch.where(active[:, None], d * t[:, None], torch.zeros_like(d))
            moved |= (move != 0).any(dim=1)
            before = self._flat_params()  # the last finite point
            self._add(move)

            if n_iter != max_iter:
                new_loss, new_grad = evaluate(active)
                loss = torch.where(active, new_loss, loss)
                flat_grad = torch.where(active[:, None], new_grad, flat_grad)
                state["func_evals"] += active.long()
                newly_bad = active & ~(torch.isfinite(loss) & torch.isfinite(flat_grad).all(dim=1))
                # back to the last finite point, frozen for good
                self._restore(newly_bad, before)
                failed |= newly_bad
                active = active & ~newly_bad
                opt_cond = flat_grad.abs().amax(dim=1) <= tol_grad
            else:
                opt_cond = torch.zeros_like(active)

            # every problem still active has been evaluated once per iteration of this step
            if n_iter == max_iter or n_iter + 1 >= max_eval:
                break
            small_step = move.abs().amax(dim=1) <= tol_change
            small_change = (loss - prev_loss).abs() < tol_change
            active = active & ~(opt_cond | small_step | small_change)

        state["stalled"] = ~moved & ~failed
        self.evaluating = ~failed
        return orig_losses.to(dtype)

    @staticmethod
    def _two_loop(flat_grad, old_dirs, old_stps, ro, ptr, num_old, H_diag, problems: Optional[Tensor] = None,
                  ages: Optional[int] = None) -> Tensor:
        """``-H g`` for every problem by the two-loop recursion, each over its own history.

        Fixed shape: all ``history_size`` ages are visited for every problem; a pair a problem
        does not have (age >= its ``num_old``) has ``rho = 0`` and zero vectors, so it changes
        nothing and the result equals ``torch.optim.LBFGS``'s loop over the pairs it has.
        ``problems`` (indices): the result of those problems only, ``[len(problems), D]``, reading
        only their rows of the history; ``ages``: visit only the newest this many ages (at least
        the largest ``num_old`` of those problems, so that the result is the same).
        """
        H, P, D = old_dirs.shape
        device = flat_grad.device
        cols = torch.arange(P, device=device) if problems is None else problems
        n_ages = H if ages is None else min(H, ages)
        age = torch.arange(n_ages, device=device)
        slots = (ptr[cols][None, :] - 1 - age[:, None]) % H  # [ages, n]: the slot of each age, newest first
        rows = slots * P + cols[None, :]  # rows of the flattened [H * P, D] ring
        rho = ro[:, cols].gather(0, slots) * (age[:, None] < num_old[cols][None, :]).to(ro.dtype)
        flat_stps, flat_dirs = old_stps.view(H * P, D), old_dirs.view(H * P, D)

        q = flat_grad[cols].neg()
        al = []
        for a_ in range(n_ages):  # newest to oldest
            a = torch.linalg.vecdot(flat_stps.index_select(0, rows[a_]), q) * rho[a_]
            q.addcmul_(flat_dirs.index_select(0, rows[a_]), a.unsqueeze(1), value=-1)
            al.append(a)
        r = q.mul_(H_diag[cols].unsqueeze(1))
        for a_ in range(n_ages - 1, -1, -1):  # oldest to newest
            be = torch.linalg.vecdot(flat_dirs.index_select(0, rows[a_]), r) * rho[a_]
            r.addcmul_(flat_stps.index_select(0, rows[a_]), (al[a_] - be).unsqueeze(1))
        return r


class SignedAdam(torch.optim.Adam):
    """Adam on the sign of the gradient, as Inverting Gradients (Geiping et al., 2020) uses it."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.sign_()
        super().step()
        return loss
