"""Optimizers that solve many independent problems at once.

Every parameter handed to these optimizers has a leading *problem* dimension ``P``: row ``p`` of
every parameter belongs to problem ``p``, and the closure returns a tensor of ``P`` losses whose
sum was back-propagated. Element-wise optimizers (Adam) are already independent per problem; L-BFGS
is not, so :class:`BatchedLBFGS` keeps every problem's curvature pairs, step length and stopping
tests apart.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer


class BatchedLBFGS(Optimizer):
    """L-BFGS over ``P`` independent problems, each exactly as :class:`torch.optim.LBFGS` runs it.

    With ``P = 1`` this follows ``torch.optim.LBFGS`` (same arguments, no line search) step by
    step. With ``P > 1`` each problem keeps its own history, ``H_diag``, step ``t``, iteration
    count and termination tests: a problem that has converged within a ``step()`` waits while the
    others iterate, so solving problems together gives what each gives alone.

    A problem whose loss or gradient becomes non-finite is marked in :attr:`failed`, moved back to
    its last finite point and frozen; the others carry on untouched.

    The closure must return a tensor of shape ``[P]`` (the per-problem losses) after
    back-propagating their sum.
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

    # ------------------------------------------------------------------ helpers
    def _flat_grad(self) -> Tensor:
        P = self.num_problems
        views = []
        for p in self._params:
            g = p.grad
            views.append(p.new_zeros(P, p[0].numel()) if g is None else g.reshape(P, -1))
        return torch.cat(views, dim=1)

    def _add(self, step: Tensor) -> None:
        """params[p] += step[p] for every problem (``step`` is [P, D])."""
        offset = 0
        with torch.no_grad():
            for p in self._params:
                n = p[0].numel()
                p.add_(step[:, offset : offset + n].view_as(p))
                offset += n

    @property
    def failed(self) -> Tensor:
        """Boolean mask ``[P]`` of problems that went non-finite and were frozen."""
        state = self.state["problems"]
        if "failed" not in state:
            return torch.zeros(self.num_problems, dtype=torch.bool)
        return state["failed"].clone()

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

        everyone = torch.ones(P, dtype=torch.bool, device=self._params[0].device)
        if "failed" in state:
            everyone = ~state["failed"]
        orig_losses, flat_grad = evaluate(everyone)
        loss = orig_losses.clone()
        device, dtype = flat_grad.device, flat_grad.dtype
        D = flat_grad.shape[1]

        if "n_iter" not in state:
            state["n_iter"] = torch.zeros(P, dtype=torch.long, device=device)
            state["func_evals"] = torch.zeros(P, dtype=torch.long, device=device)
            state["failed"] = torch.zeros(P, dtype=torch.bool, device=device)
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

        # a problem that is already non-finite at its current point fails right here
        failed |= everyone & ~(torch.isfinite(loss) & torch.isfinite(flat_grad).all(dim=1))
        state["func_evals"] += (~failed).long()
        active = ~failed & ~(flat_grad.abs().amax(dim=1) <= tol_grad)

        n_iter = 0
        current_evals = 1
        while n_iter < max_iter and bool(active.any()):
            n_iter += 1
            n_iter_total += active.long()
            first = active & (n_iter_total == 1)
            later = active & ~first

            if bool(first.any()):
                d[first] = -flat_grad[first]
                num_old[first] = 0
                H_diag[first] = 1.0
            if bool(later.any()):
                y = flat_grad - prev_flat_grad
                s = d * t[:, None]
                ys = torch.linalg.vecdot(y, s)
                accept = later & (ys > 1e-10)
                if bool(accept.any()):
                    idx = accept.nonzero().squeeze(1)
                    slot = ptr[idx]
                    old_dirs[slot, idx] = y[idx]
                    old_stps[slot, idx] = s[idx]
                    ro[slot, idx] = 1.0 / ys[idx]
                    ptr[idx] = (slot + 1) % H
                    num_old[idx] = (num_old[idx] + 1).clamp_(max=H)
                    H_diag[idx] = ys[idx] / torch.linalg.vecdot(y[idx], y[idx])
                idx = later.nonzero().squeeze(1)
                d[idx] = self._two_loop(flat_grad, idx, old_dirs, old_stps, ro, ptr, num_old, H_diag)

            prev_flat_grad[active] = flat_grad[active]
            prev_loss[active] = loss[active]

            t_first = torch.clamp(1.0 / flat_grad.abs().sum(dim=1), max=1.0) * lr
            t[active] = torch.where(first, t_first, torch.full_like(t_first, lr))[active]

            gtd = torch.linalg.vecdot(flat_grad, d)
            active &= ~(gtd > -tol_change)
            if not bool(active.any()):
                break

            move = d * (t * active.to(dtype))[:, None]
            before = [p.detach().clone() for p in self._params]  # the last finite point
            self._add(move)

            if n_iter != max_iter:
                new_loss, new_grad = evaluate(active)
                loss = torch.where(active, new_loss, loss)
                flat_grad = torch.where(active[:, None], new_grad, flat_grad)
                state["func_evals"] += active.long()
                current_evals += 1
                newly_bad = active & ~(torch.isfinite(loss) & torch.isfinite(flat_grad).all(dim=1))
                if bool(newly_bad.any()):
                    # back to the last finite point, frozen for good
                    for p, b in zip(self._params, before):
                        p[newly_bad] = b[newly_bad]
                    failed |= newly_bad
                    active &= ~newly_bad
                opt_cond = flat_grad.abs().amax(dim=1) <= tol_grad
            else:
                opt_cond = torch.zeros_like(active)

            if n_iter == max_iter or current_evals >= max_eval:
                break
            small_step = move.abs().amax(dim=1) <= tol_change
            small_change = (loss - prev_loss).abs() < tol_change
            active &= ~(opt_cond | small_step | small_change)

        self.evaluating = ~failed
        return orig_losses.to(dtype)

    @staticmethod
    def _two_loop(flat_grad, idx, old_dirs, old_stps, ro, ptr, num_old, H_diag) -> Tensor:
        """``-H g`` for the problems ``idx`` by the two-loop recursion, each over its own history."""
        H, P, D = old_dirs.shape
        n_old = num_old[idx]
        n_max = int(n_old.max())
        ages = torch.arange(n_max, device=flat_grad.device)
        slots = (ptr[idx][None, :] - 1 - ages[:, None]) % H  # [n_max, n]: the slot of each age
        # ro of pairs a problem does not have yet is 0: they change nothing
        rho = ro[:, idx].gather(0, slots) * (ages[:, None] < n_old[None, :]).to(ro.dtype)
        if bool((slots == slots[:, :1]).all()):  # all these problems' pairs sit in the same slots
            first_slot = slots[:, 0].tolist()
            every = idx.numel() == P

            def pair(age: int) -> tuple[Tensor, Tensor]:
                k = first_slot[age]
                if every:
                    return old_stps[k], old_dirs[k]
                return old_stps[k].index_select(0, idx), old_dirs[k].index_select(0, idx)
        else:
            # each age's pairs gathered when needed: small [n, D] copies that stay in cache
            rows = slots * P + idx  # [n_max, n]: row of (slot, problem) in the flattened [H * P, D] buffers
            flat_stps, flat_dirs = old_stps.view(H * P, D), old_dirs.view(H * P, D)

            def pair(age: int) -> tuple[Tensor, Tensor]:
                return flat_stps.index_select(0, rows[age]), flat_dirs.index_select(0, rows[age])

        q = flat_grad.index_select(0, idx).neg_()
        al = []
        for age in range(n_max):  # newest to oldest
            s_a, y_a = pair(age)
            a = torch.linalg.vecdot(s_a, q) * rho[age]
            q.addcmul_(y_a, a.unsqueeze(1), value=-1)
            al.append(a)
        r = q.mul_(H_diag[idx].unsqueeze(1))
        for age in range(n_max - 1, -1, -1):  # oldest to newest
            s_a, y_a = pair(age)
            be = torch.linalg.vecdot(y_a, r) * rho[age]
            r.addcmul_(s_a, (al[age] - be).unsqueeze(1))
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
