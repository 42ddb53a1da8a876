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
    Both give the same iterates. ``active_only`` (needs ``early_exit``; what the attack uses on the
    CPU) trades the fixed shape for less work: each iteration reads the active problems back and
    runs the update on their rows alone, so converged problems cost nothing (the same arithmetic
    per row; only the history's products may round differently, batched or per problem).

    The two-loop recursion is computed from inner products (:meth:`_direction`): two passes over
    the history per iteration, the pairs' own products ``SY`` and ``YY`` kept as pairs come in.

    A problem whose loss or gradient becomes non-finite is marked in :attr:`failed`, moved back to
    its last finite point and frozen; the others carry on untouched. A problem that a whole step
    left where it was is at a fixed point (the next step starts from the same point, gradient and
    history and does the same): :attr:`stalled` marks those, so a caller can stop when every
    problem is stalled or failed. Problems in the mask :attr:`frozen` (set by the caller) are left
    alone: not evaluated, not moved, and so stalled.

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
        active_only: bool = False,
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
        if active_only and not early_exit:
            raise ValueError("BatchedLBFGS: active_only reads the active problems back every iteration; "
                             "it needs early_exit=True")
        self.early_exit = early_exit
        self.active_only = active_only
        #: mask ``[P]`` of problems a caller has stopped (:mod:`leakage.engine.stopping`): a step leaves them
        #: where they are and does not evaluate them; they count as :attr:`stalled`
        self.frozen: Optional[Tensor] = None

    # ------------------------------------------------------------------ helpers
    def _flat_grad(self, sel: Optional[Tensor] = None) -> Tensor:
        """The gradients as ``[P, D]``, or only the problems ``sel`` (``[k, D]``)."""
        P = self.num_problems
        n = P if sel is None else sel.numel()
        views = []
        for p in self._params:
            g = p.grad
            if g is None:
                views.append(p.new_zeros(n, p[0].numel()))
            else:
                g = g.reshape(P, -1)
                views.append(g if sel is None else g.index_select(0, sel))
        return torch.cat(views, dim=1)

    def _flat_params(self, sel: Optional[Tensor] = None) -> Tensor:
        P = self.num_problems
        return torch.cat([p.detach().reshape(P, -1) if sel is None else p.detach().reshape(P, -1).index_select(0, sel)
                          for p in self._params], dim=1)

    def _add(self, step: Tensor, sel: Optional[Tensor] = None) -> None:
        """params[p] += step[p] for every problem (``step`` is [P, D]), or for the problems ``sel``
        (``step`` is then [k, D], row i for problem sel[i])."""
        offset = 0
        with torch.no_grad():
            for p in self._params:
                n = p[0].numel()
                part = step[:, offset : offset + n]
                if sel is None:
                    p.add_(part.view_as(p))
                else:
                    p.index_add_(0, sel, part.reshape(-1, *p.shape[1:]))
                offset += n

    def _restore(self, rows: Tensor, flat: Tensor, sel: Optional[Tensor] = None) -> None:
        """params[p] = flat[p] where ``rows[p]`` (a fixed-shape select, no indexing by the mask);
        with ``sel``, ``rows`` and ``flat`` hold the problems ``sel`` only."""
        offset = 0
        with torch.no_grad():
            for p in self._params:
                n = p[0].numel()
                if sel is None:
                    old = flat[:, offset : offset + n].view_as(p)
                    p.copy_(torch.where(rows.view(-1, *([1] * (p.dim() - 1))), old, p))
                else:
                    old = flat[:, offset : offset + n].reshape(-1, *p.shape[1:])
                    cur = p.index_select(0, sel)
                    p.index_copy_(0, sel, torch.where(rows.view(-1, *([1] * (p.dim() - 1))), old, cur))
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

        def evaluate(active: Tensor, sel: Optional[Tensor]) -> tuple[Tensor, Tensor]:
            # problems outside `active` need not be evaluated: their rows are ignored
            self.evaluating = active
            with torch.enable_grad():
                losses = closure()
            losses = torch.as_tensor(losses).detach().reshape(-1)
            if losses.numel() != P:
                raise ValueError(
                    f"BatchedLBFGS closure must return {P} per-problem losses, got shape {tuple(losses.shape)}"
                )
            return losses.to(torch.float64), self._flat_grad(sel)

        if "failed" in state:
            everyone = ~state["failed"]
        else:
            everyone = torch.ones(P, dtype=torch.bool, device=self._params[0].device)
        frozen = self.frozen
        if frozen is not None:  # problems the caller has stopped: neither evaluated nor moved
            everyone = everyone & ~frozen.to(everyone.device)
        orig_losses, flat_grad = evaluate(everyone, None)
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
            # curvature pairs in a ring per problem: slot ptr-1 is the newest; row p of the history
            # holds problem p's steps s (slots 0..H-1) then its gradient changes y (slots H..2H-1)
            state["history"] = torch.zeros(P, 2 * H, D, dtype=dtype, device=device)
            # their inner products, kept as the pairs come in: SY[p, i, j] = s_i . y_j, YY[p, i, j] = y_i . y_j
            state["SY"] = torch.zeros(P, H, H, dtype=dtype, device=device)
            state["YY"] = torch.zeros(P, H, H, dtype=dtype, device=device)
            state["ro"] = torch.zeros(P, H, dtype=dtype, device=device)
            state["ptr"] = torch.zeros(P, dtype=torch.long, device=device)
            state["num_old"] = torch.zeros(P, dtype=torch.long, device=device)
            state["H_diag"] = torch.ones(P, dtype=dtype, device=device)
            state["prev_flat_grad"] = torch.zeros(P, D, dtype=dtype, device=device)
            state["prev_loss"] = torch.zeros(P, dtype=torch.float64, device=device)

        n_iter_total, failed = state["n_iter"], state["failed"]
        d, t = state["d"], state["t"]
        history, SY, YY, ro = state["history"], state["SY"], state["YY"], state["ro"]
        ptr, num_old, H_diag = state["ptr"], state["num_old"], state["H_diag"]
        prev_flat_grad, prev_loss = state["prev_flat_grad"], state["prev_loss"]
        problems = torch.arange(P, device=device)
        moved = torch.zeros(P, dtype=torch.bool, device=device)

        # a problem that is already non-finite at its current point fails right here
        failed |= everyone & ~(torch.isfinite(loss) & torch.isfinite(flat_grad).all(dim=1))
        state["func_evals"] += (everyone & ~failed).long()
        active = everyone & ~failed & ~(flat_grad.abs().amax(dim=1) <= tol_grad)

        for n_iter in range(1, max_iter + 1):
            if self.early_exit and not bool(active.any()):
                break
            # The rows this iteration works on: every problem (fixed shape, inactive rows masked) or,
            # with active_only, the active problems alone (a data-dependent shape: one host read).
            # Each row's arithmetic is the same either way.
            sel = active.nonzero().squeeze(1) if self.active_only else None

            def rows_of(x: Tensor) -> Tensor:
                return x if sel is None else x.index_select(0, sel)

            def put(dst: Tensor, src: Tensor) -> None:
                if sel is None:
                    dst.copy_(src)
                else:
                    dst.index_copy_(0, sel, src)

            act = rows_of(active)
            idx = problems if sel is None else sel
            n_it = rows_of(n_iter_total) + act.long()
            put(n_iter_total, n_it)
            first = act & (n_it == 1)
            later = act & ~first
            g, g_prev, d_k, t_k = rows_of(flat_grad), rows_of(prev_flat_grad), rows_of(d), rows_of(t)
            ptr_k, num_old_k, H_diag_k = rows_of(ptr), rows_of(num_old), rows_of(H_diag)

            # a new curvature pair for the problems whose step satisfies the curvature condition
            y = g - g_prev
            s = d_k * t_k[:, None]
            ys = torch.linalg.vecdot(y, s)
            accept = later & (ys > 1e-10)
            slot = ptr_k.clone()  # where the new pair goes (ptr_k may be the state itself)
            flat_hist = history.view(P * 2 * H, D)
            keep = ~accept[:, None]
            for rows, new in ((idx * (2 * H) + slot, s), (idx * (2 * H) + H + slot, y)):
                flat_hist.index_copy_(0, rows, torch.where(keep, flat_hist.index_select(0, rows), new))
            flat_ro = ro.view(P * H)
            ro_rows = idx * H + slot
            flat_ro.index_copy_(0, ro_rows, torch.where(accept, 1.0 / ys, flat_ro.index_select(0, ro_rows)))
            ptr_k = torch.where(accept, (ptr_k + 1) % H, ptr_k)
            num_old_k = torch.where(accept, (num_old_k + 1).clamp(max=H), num_old_k)
            H_diag_k = torch.where(accept, ys / torch.linalg.vecdot(y, y), H_diag_k)
            # the first iteration of a problem starts from an empty history
            num_old_k = num_old_k.masked_fill(first, 0)
            H_diag_k = H_diag_k.masked_fill(first, 1.0)
            put(ptr, ptr_k)
            put(num_old, num_old_k)
            put(H_diag, H_diag_k)

            direction = self._direction(g, y, s, accept, slot, history, SY, YY, ro, ptr_k, num_old_k, H_diag_k,
                                        sel, idx)
            d_k = torch.where(first[:, None], -g, torch.where(later[:, None], direction, d_k))
            put(d, d_k)

            put(prev_flat_grad, torch.where(act[:, None], g, g_prev))
            loss_k = rows_of(loss)
            put(prev_loss, torch.where(act, loss_k, rows_of(prev_loss)))

            t_first = torch.clamp(1.0 / g.abs().sum(dim=1), max=1.0) * lr
            t_k = torch.where(act, torch.where(first, t_first, torch.full_like(t_first, lr)), t_k)
            put(t, t_k)

            gtd = torch.linalg.vecdot(g, d_k)
            act = act & ~(gtd > -tol_change)
            if sel is None:
                active = act
            else:
                active = active.index_copy(0, sel, act)
            if self.early_exit and not bool(active.any()):
                break

            move = torch.where(act[:, None], d_k * t_k[:, None], torch.zeros_like(d_k))
            moved_k = (move != 0).any(dim=1)
            before = self._flat_params(sel)  # the last finite point
            self._add(move, sel)
            if sel is None:
                moved |= moved_k
            else:
                moved.index_copy_(0, sel, rows_of(moved) | moved_k)

            if n_iter != max_iter:
                new_loss, new_grad = evaluate(active, sel)
                loss_k = torch.where(act, rows_of(new_loss), loss_k)
                g = torch.where(act[:, None], new_grad, g)
                put(loss, loss_k)
                put(flat_grad, g)
                state["func_evals"] += active.long()
                newly_bad = act & ~(torch.isfinite(loss_k) & torch.isfinite(g).all(dim=1))
                # back to the last finite point, frozen for good
                self._restore(newly_bad, before, sel)
                act = act & ~newly_bad
                if sel is None:
                    failed |= newly_bad
                else:
                    failed.index_copy_(0, sel, rows_of(failed) | newly_bad)
                opt_cond = g.abs().amax(dim=1) <= tol_grad
            else:
                opt_cond = torch.zeros_like(act)

            # every problem still active has been evaluated once per iteration of this step
            if n_iter == max_iter or n_iter + 1 >= max_eval:
                break
            small_step = move.abs().amax(dim=1) <= tol_change
            small_change = (loss_k - rows_of(prev_loss)).abs() < tol_change
            act = act & ~(opt_cond | small_step | small_change)
            active = act if sel is None else active.index_copy(0, sel, act)

        state["stalled"] = ~moved & ~failed
        self.evaluating = ~failed
        return orig_losses.to(dtype)

    @staticmethod
    def _history_products(history: Tensor, vecs: Tensor, sel: Optional[Tensor], idx: Tensor) -> Tensor:
        """``vecs[i] @ history[idx[i]].T`` for every row i: ``[k, n, 2H]`` (one pass over the history)."""
        P = history.shape[0]
        if sel is None or 2 * sel.numel() >= P:  # one batched product over every problem's history
            out = torch.bmm(vecs if sel is None else vecs.new_zeros(P, *vecs.shape[1:]).index_copy_(0, sel, vecs),
                            history.transpose(1, 2))
            return out if sel is None else out.index_select(0, sel)
        # a few active problems: their own histories, without copying them
        return torch.stack([torch.mm(v, history[p].T) for v, p in zip(vecs, idx.tolist())])

    @staticmethod
    def _history_combination(history: Tensor, coef: Tensor, sel: Optional[Tensor], idx: Tensor) -> Tensor:
        """``coef[i] @ history[idx[i]]`` for every row i: ``[k, D]`` (one pass over the history)."""
        P = history.shape[0]
        if sel is None or 2 * sel.numel() >= P:
            full = coef if sel is None else coef.new_zeros(P, coef.shape[1]).index_copy_(0, sel, coef)
            out = torch.bmm(full.unsqueeze(1), history).squeeze(1)
            return out if sel is None else out.index_select(0, sel)
        return torch.stack([torch.mv(history[p].T, c) for c, p in zip(coef, idx.tolist())])

    def _direction(self, g, y, s, accept, slot, history, SY, YY, ro, ptr, num_old, H_diag, sel, idx) -> Tensor:
        """``-H g`` for the rows ``idx`` (rows of ``g``, ``y``, ``s``, ``accept``, ``slot``, ``ptr``,
        ``num_old`` and ``H_diag``), each over its own history: ``torch.optim.LBFGS``'s two-loop
        recursion, written with inner products.

        The two loops only ever take inner products of ``g`` and the history's vectors with the
        history's vectors, so with the products ``S g``, ``Y g`` (one pass over the history) and the
        pairs' own products ``SY`` and ``YY`` (kept up to date as pairs come in: one more row and
        column per new pair, from the same pass), each loop is a unit triangular solve of size
        ``history_size``, and the direction is one combination of the history's vectors (a second
        pass). The same arithmetic as the loops up to rounding, reading the history twice instead
        of four times plus copies. Fixed shape: every slot of the ring takes part; a pair a
        problem does not have has ``rho = 0``, so it changes nothing.
        """
        P, H2, D = history.shape
        H = H2 // 2
        k = g.shape[0]
        # pass 1: products of g and of the new pair with every vector of the history
        prods = self._history_products(history, torch.stack([g, y, s], dim=1), sel, idx)  # [k, 3, 2H]
        Sg, Yg = prods[:, 0, :H], prods[:, 0, H:]
        Sy, Yy, Ys = prods[:, 1, :H], prods[:, 1, H:], prods[:, 2, H:]
        # the new pair's row and column of SY and YY (slot `slot` now holds it)
        sy, yy = SY.index_select(0, idx), YY.index_select(0, idx)
        slots = torch.arange(H, device=g.device)
        at = (slots[None, :] == slot[:, None]) & accept[:, None]  # [k, H]
        col, row = at[:, None, :], at[:, :, None]
        sy = torch.where(col, Sy[:, :, None], torch.where(row, Ys[:, None, :], sy))
        yy = torch.where(col, Yy[:, :, None], torch.where(row, Yy[:, None, :], yy))
        SY.index_copy_(0, idx, sy)
        YY.index_copy_(0, idx, yy)

        # ages, newest (0) to oldest, and each age's slot
        ages = slots
        perm = (ptr[:, None] - 1 - ages[None, :]) % H  # [k, H]
        rho = ro.index_select(0, idx).gather(1, perm) * (ages[None, :] < num_old[:, None]).to(ro.dtype)
        u = -Sg.gather(1, perm)  # s_a . q_0 with q_0 = -g
        v = -Yg.gather(1, perm)
        sy_a = sy.gather(1, perm[:, :, None].expand(k, H, H)).gather(2, perm[:, None, :].expand(k, H, H))
        yy_a = yy.gather(1, perm[:, :, None].expand(k, H, H)).gather(2, perm[:, None, :].expand(k, H, H))
        eye = torch.eye(H, dtype=g.dtype, device=g.device)
        # first loop, newest to oldest: al_a = rho_a (s_a . q_0 - sum_{b newer} al_b s_a . y_b)
        lower = eye + rho[:, :, None] * torch.tril(sy_a, diagonal=-1)
        al = torch.linalg.solve_triangular(lower, (rho * u)[:, :, None], upper=False, unitriangular=True)
        # r_0 = H_diag q; second loop, oldest to newest: w_a = al_a - be_a,
        # be_a = rho_a (y_a . r_0 + sum_{c older} w_c y_a . s_c)
        y_r0 = H_diag[:, None] * (v - torch.bmm(yy_a, al).squeeze(2))
        upper = eye + rho[:, :, None] * torch.triu(sy_a.transpose(1, 2), diagonal=1)
        w = torch.linalg.solve_triangular(upper, (al.squeeze(2) - rho * y_r0)[:, :, None], upper=True,
                                          unitriangular=True).squeeze(2)
        # d = H_diag (-g - sum al_b y_b) + sum w_c s_c: pass 2
        coef = torch.cat([torch.zeros_like(w).scatter_(1, perm, w),
                          torch.zeros_like(w).scatter_(1, perm, -H_diag[:, None] * al.squeeze(2))], dim=1)
        return self._history_combination(history, coef, sel, idx) - H_diag[:, None] * g


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
