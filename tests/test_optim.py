"""BatchedLBFGS against torch.optim.LBFGS, problem independence, NaN isolation, closure contract."""

from __future__ import annotations

import pytest
import torch

from leakage.engine.optim import BatchedLBFGS, SignedAdam

F64 = torch.float64


# --------------------------------------------------------------------------- test problems
def rosenbrock(x: torch.Tensor, a: float = 3.0) -> torch.Tensor:
    """Chained Rosenbrock over the last dimension (nonconvex)."""
    return (a * (x[..., 1:] - x[..., :-1] ** 2) ** 2).sum(-1) + ((1 - x[..., :-1]) ** 2).sum(-1)


def double_well(x: torch.Tensor, w_max: float = 100.0, c: float = 0.1) -> torch.Tensor:
    """Weighted double wells (x^2 - 1)^2 with a weak chain coupling (nonconvex, many minima)."""
    w = torch.linspace(1.0, w_max, x.shape[-1], dtype=x.dtype)
    return (w * (x**2 - 1) ** 2).sum(-1) + c * (x[..., 1:] * x[..., :-1]).sum(-1)


def _start(d: int, scale: float, seed: int) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale


PROBLEMS = {
    "double_well_30": (double_well, lambda: _start(30, 4.0, 11)),
    "rosenbrock_60": (rosenbrock, lambda: _start(60, 3.0, 12)),
}


def torch_lbfgs_trajectory(fn, x0, steps, **kw):
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], **kw)

    def closure():
        opt.zero_grad()
        loss = fn(x)
        loss.backward()
        return loss

    traj = []
    for _ in range(steps):
        opt.step(closure)
        traj.append(x.detach().clone())
    return torch.stack(traj)


def batched_trajectory(fns, x0s, steps, record=None, early_exit=True, **kw):
    """Solve problems ``fns[p]`` from ``x0s[p]`` together; the trajectory is ``[steps, P, D]``."""
    x = torch.stack([x0.clone() for x0 in x0s]).requires_grad_(True)
    opt = BatchedLBFGS([x], early_exit=early_exit, **kw)

    def closure():
        opt.zero_grad()
        losses = torch.stack([fn(x[p]) for p, fn in enumerate(fns)])
        losses.sum().backward()
        if record is not None:
            record.append((opt.evaluating.clone(), losses.detach().clone(), x.detach().clone()))
        return losses.detach()

    traj = []
    for _ in range(steps):
        opt.step(closure)
        traj.append(x.detach().clone())
    return torch.stack(traj), opt


# ---------------------------------------------------------------- P = 1 follows torch LBFGS
@pytest.mark.parametrize("max_iter", [20, 3])
@pytest.mark.parametrize("name", ["double_well_30", "rosenbrock_60"])
def test_single_problem_follows_torch_lbfgs(name, max_iter):
    fn, start = PROBLEMS[name]
    x0 = start()
    steps = 8 if max_iter == 20 else 12
    kw = dict(lr=1.0, max_iter=max_iter, history_size=5)
    ref = torch_lbfgs_trajectory(fn, x0, steps, **kw)
    got, opt = batched_trajectory([fn], [x0], steps, **kw)
    assert got.shape == (steps, 1, x0.numel())
    for s in range(steps):
        torch.testing.assert_close(got[s, 0], ref[s], rtol=0, atol=1e-10, msg=f"step {s}")
    # the comparison is not vacuous: the trajectory moves over several steps and improves the loss
    moved = [(ref[s] - (ref[s - 1] if s else x0)).abs().max().item() for s in range(steps)]
    assert sum(m > 1e-6 for m in moved) >= 3
    assert fn(ref[-1]) < fn(x0) * 1e-2 or fn(ref[-1]) < 0
    assert not bool(opt.failed.any())


def test_single_problem_n_iter_matches_torch():
    """The iteration counter (which decides the first-step size and history reset) matches torch's."""
    fn, start = PROBLEMS["double_well_30"]
    x0 = start()
    x = x0.clone().requires_grad_(True)
    ref = torch.optim.LBFGS([x], lr=1.0, max_iter=20, history_size=5)

    def closure():
        ref.zero_grad()
        loss = fn(x)
        loss.backward()
        return loss

    xb = x0.clone()[None].requires_grad_(True)
    opt = BatchedLBFGS([xb], lr=1.0, max_iter=20, history_size=5)

    def bclosure():
        opt.zero_grad()
        loss = fn(xb)
        loss.sum().backward()
        return loss.detach()

    for _ in range(3):
        ref_loss = ref.step(closure)
        got_loss = opt.step(bclosure)
        assert got_loss.shape == (1,)
        assert float(got_loss[0]) == pytest.approx(float(ref_loss.detach()), rel=1e-9)
        assert int(opt.state["problems"]["n_iter"][0]) == ref.state[x]["n_iter"]
        assert int(opt.state["problems"]["func_evals"][0]) == ref.state[x]["func_evals"]


# ------------------------------------------------------------------------- independence
def _three_problems():
    fns = [
        lambda x: double_well(x, 100.0, 0.1),
        lambda x: rosenbrock(x, 3.0),
        lambda x: 0.5 * ((x - 0.3) ** 2).sum(),  # converges in the first few iterations
    ]
    x0s = [_start(12, 4.0, 1), _start(12, 2.0, 2), _start(12, 1.0, 3)]
    return fns, x0s


def test_problems_solved_together_match_each_alone():
    fns, x0s = _three_problems()
    kw = dict(lr=1.0, max_iter=20, history_size=5)
    together, opt = batched_trajectory(fns, x0s, 6, **kw)
    n_iter = opt.state["problems"]["n_iter"]
    # the problems stop at different times, so the per-problem bookkeeping is exercised
    assert len(set(n_iter.tolist())) == 3
    # their curvature pairs sit in different ring slots (the per-problem history path)
    assert len(set(opt.state["problems"]["ptr"].tolist())) > 1
    for p in range(3):
        alone, _ = batched_trajectory([fns[p]], [x0s[p]], 6, **kw)
        torch.testing.assert_close(together[:, p], alone[:, 0], rtol=0, atol=1e-12, msg=f"problem {p}")
        # and each one alone is torch's LBFGS
        ref = torch_lbfgs_trajectory(fns[p], x0s[p], 6, **kw)
        torch.testing.assert_close(alone[:, 0], ref, rtol=0, atol=1e-10)


def test_converged_problem_is_not_evaluated_again():
    fns, x0s = _three_problems()
    record = []
    batched_trajectory(fns, x0s, 2, record=record, lr=1.0, max_iter=20, history_size=5)
    masks = torch.stack([m for m, _, _ in record])
    assert masks.dtype == torch.bool and masks.shape[1] == 3
    assert bool(masks[0].all())  # every problem is evaluated at the start of a step
    # the quadratic converges early: later evaluations leave it out, the others go on
    assert not bool(masks[:, 2].all())
    assert bool(masks[:, 0].sum() > masks[:, 2].sum())


# -------------------------------------------------------------------------- NaN isolation
C = 2.0  # problem 1's loss is NaN (sqrt of a negative number) once x[0] > C


def _nan_problem(x):
    return 0.5 * ((x - 3.0) ** 2).sum() + torch.sqrt(C - x[0])


def test_nan_problem_is_frozen_and_others_unaffected():
    fns, x0s = _three_problems()
    x_nan0 = torch.zeros(12, dtype=F64)
    kw = dict(lr=1.0, max_iter=20, history_size=5)
    record = []
    with_nan, opt = batched_trajectory([fns[0], _nan_problem, fns[1]], [x0s[0], x_nan0, x0s[1]], 6, record=record, **kw)

    # the NaN really happens in the middle of a step, after finite evaluations
    losses = torch.stack([l for _, l, _ in record])
    bad = (~torch.isfinite(losses[:, 1])).nonzero().squeeze(1)
    assert bad.numel() >= 1
    first_bad = int(bad[0])
    assert first_bad >= 2 and bool(torch.isfinite(losses[:first_bad, 1]).all())

    assert opt.failed.tolist() == [False, True, False]
    assert bool(torch.isfinite(with_nan).all())
    # frozen at its last finite point (x[0] still below the threshold), for good
    last_ok = record[first_bad - 1][2][1]
    torch.testing.assert_close(with_nan[-1, 1], last_ok, rtol=0, atol=1e-12)
    assert float(with_nan[-1, 1, 0]) < C
    step_of_failure = next(s for s in range(6) if torch.equal(with_nan[s, 1], with_nan[-1, 1]))
    for s in range(step_of_failure, 6):
        assert torch.equal(with_nan[s, 1], with_nan[-1, 1])
    # after failing it is no longer evaluated
    masks = torch.stack([m for m, _, _ in record])
    assert not bool(masks[first_bad + 1 :, 1].any())
    assert not bool(opt.evaluating[1])

    # the other problems follow exactly the trajectory they follow without the NaN problem
    without, opt2 = batched_trajectory([fns[0], fns[1]], [x0s[0], x0s[1]], 6, **kw)
    torch.testing.assert_close(with_nan[:, [0, 2]], without, rtol=0, atol=1e-12)
    assert not bool(opt2.failed.any())


def test_problem_nonfinite_at_start_fails_immediately():
    x = torch.tensor([[0.5], [5.0]], dtype=F64, requires_grad=True)  # row 1 starts beyond the threshold
    opt = BatchedLBFGS([x], lr=1.0, max_iter=5)

    def closure():
        opt.zero_grad()
        losses = (x[:, 0] - 1) ** 2 + torch.sqrt(C - x[:, 0])
        losses.nansum().backward()
        return losses.detach()

    opt.step(closure)
    assert opt.failed.tolist() == [False, True]
    assert float(x[1, 0].detach()) == 5.0  # never moved
    assert float(x[0, 0].detach()) != 0.5


# ------------------------------------------------------------------------ closure contract
def test_closure_with_wrong_shape_raises():
    x = torch.zeros(3, 4, dtype=F64, requires_grad=True)
    opt = BatchedLBFGS([x])

    def closure():
        opt.zero_grad()
        loss = ((x - 1) ** 2).sum()
        loss.backward()
        return loss  # a scalar, not the 3 per-problem losses

    with pytest.raises(ValueError, match="3 per-problem losses"):
        opt.step(closure)


def test_evaluating_mask_is_set_before_the_closure():
    x = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    opt = BatchedLBFGS([x], max_iter=4)
    seen = []

    def closure():
        seen.append(getattr(opt, "evaluating", None))
        opt.zero_grad()
        losses = ((x - torch.tensor([[1.0], [2.0]], dtype=F64)) ** 2).sum(1)
        losses.sum().backward()
        return losses.detach()

    out = opt.step(closure)
    assert out.shape == (2,)
    assert all(isinstance(m, torch.Tensor) and m.dtype == torch.bool and m.shape == (2,) for m in seen)
    assert seen[0].tolist() == [True, True]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(line_search_fn="strong_wolfe"), "line_search_fn"),
        (dict(lr=0.0), "lr > 0"),
        (dict(history_size=0), "history_size"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    x = torch.zeros(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        BatchedLBFGS([x], **kwargs)


def test_parameters_must_share_the_problem_dimension():
    a = torch.zeros(2, 3, requires_grad=True)
    b = torch.zeros(3, 3, requires_grad=True)
    with pytest.raises(ValueError, match="leading problem dimension"):
        BatchedLBFGS([a, b])


def test_multiple_parameters_match_single_flat_parameter():
    """Splitting a problem's variables over two parameters changes nothing."""
    x0 = torch.stack([_start(6, 2.0, 5), _start(6, 2.0, 6)])
    flat, _ = batched_trajectory([rosenbrock, rosenbrock], list(x0), 4, lr=1.0, max_iter=20, history_size=5)

    a = x0[:, :2].clone().requires_grad_(True)
    b = x0[:, 2:].clone().reshape(2, 2, 2).requires_grad_(True)
    opt = BatchedLBFGS([a, b], lr=1.0, max_iter=20, history_size=5)

    def closure():
        opt.zero_grad()
        losses = rosenbrock(torch.cat([a, b.flatten(1)], 1))
        losses.sum().backward()
        return losses.detach()

    for s in range(4):
        opt.step(closure)
        torch.testing.assert_close(torch.cat([a, b.flatten(1)], 1).detach(), flat[s], rtol=0, atol=1e-12)


def test_signed_adam_moves_by_lr_in_sign_direction():
    x = torch.tensor([[1.0, -2.0, 3.0]], requires_grad=True)
    opt = SignedAdam([x], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (x * torch.tensor([[1e-3, -50.0, 7.0]])).sum()
        loss.backward()
        return loss

    opt.step(closure)
    # Adam on sign(g): the first step is lr * sign(g) whatever the gradient's size
    torch.testing.assert_close(x.detach(), torch.tensor([[0.9, -1.9, 2.9]]), atol=1e-6, rtol=0)


# --------------------------------------------------------------- fixed shape, no host sync
def test_fixed_work_steps_give_the_same_iterates():
    """early_exit=False (max_iter masked iterations every step) changes nothing but the work done."""
    fns, x0s = _three_problems()
    fns, x0s = [fns[0], _nan_problem, fns[1], fns[2]], [x0s[0], torch.zeros(12, dtype=F64), x0s[1], x0s[2]]
    kw = dict(lr=1.0, max_iter=20, history_size=5)
    early, opt_a = batched_trajectory(fns, x0s, 6, **kw)
    record = []
    fixed, opt_b = batched_trajectory(fns, x0s, 6, record=record, early_exit=False, **kw)
    torch.testing.assert_close(fixed, early, rtol=0, atol=0)
    assert opt_b.failed.tolist() == opt_a.failed.tolist() == [False, True, False, False]
    for key in ("n_iter", "func_evals", "ptr", "num_old"):
        assert torch.equal(opt_a.state["problems"][key], opt_b.state["problems"][key]), key
    # every step evaluated max_iter times (the last iteration moves without evaluating)
    assert len(record) == 6 * 20


def test_active_only_gives_the_same_iterates():
    """active_only (the L-BFGS update on the active problems' rows alone) changes only the work done
    (and rounding: the history's products run per problem instead of batched)."""
    fns, x0s = _three_problems()
    fns, x0s = [fns[0], _nan_problem, fns[1], fns[2]], [x0s[0], torch.zeros(12, dtype=F64), x0s[1], x0s[2]]
    kw = dict(lr=1.0, max_iter=20, history_size=5)
    rec_a, rec_b = [], []
    masked, opt_a = batched_trajectory(fns, x0s, 6, record=rec_a, **kw)
    compact, opt_b = batched_trajectory(fns, x0s, 6, record=rec_b, active_only=True, **kw)
    torch.testing.assert_close(compact, masked, rtol=0, atol=1e-12)
    assert opt_b.failed.tolist() == opt_a.failed.tolist() == [False, True, False, False]
    for key in ("n_iter", "func_evals", "ptr", "num_old", "stalled"):
        assert torch.equal(opt_a.state["problems"][key], opt_b.state["problems"][key]), key
    for key in ("d", "t", "H_diag", "history", "SY", "YY", "ro", "prev_flat_grad", "prev_loss"):
        torch.testing.assert_close(opt_b.state["problems"][key], opt_a.state["problems"][key], rtol=1e-12,
                                   atol=1e-15, equal_nan=True, msg=key)
    # the same evaluations, with the same problems asked for
    assert len(rec_a) == len(rec_b)
    assert all(torch.equal(ma, mb) for (ma, _, _), (mb, _, _) in zip(rec_a, rec_b))
    # and the problems stop at different times, so the compact rows really differ from all rows
    assert len(set(opt_b.state["problems"]["n_iter"].tolist())) > 2
    with pytest.raises(ValueError, match="active_only"):
        BatchedLBFGS([torch.zeros(2, 3, requires_grad=True)], early_exit=False, active_only=True)


class _HostSyncs(torch.overrides.TorchFunctionMode):
    """Records the tensor operations that read a value back to the host."""

    NAMES = {"__bool__", "item", "tolist", "nonzero", "__int__", "__float__", "__index__", "masked_select",
             "argwhere", "numpy", "unique"}

    def __init__(self):
        super().__init__()
        self.seen = []
        self.in_closure = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if not self.in_closure and name in self.NAMES:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def _recorded_closure(opt, mode, fns, x):
    """The three problems' closure, with the host reads it makes itself left out of ``mode``'s record."""
    def closure():
        mode.in_closure = True
        opt.zero_grad()
        losses = torch.stack([fn(x[p]) for p, fn in enumerate(fns)])
        losses.sum().backward()
        mode.in_closure = False
        return losses.detach()
    return closure


def test_a_step_without_early_exit_never_reads_back_to_the_host():
    fns, x0s = _three_problems()
    x = torch.stack(x0s).requires_grad_(True)
    opt = BatchedLBFGS([x], lr=1.0, max_iter=20, history_size=5, early_exit=False)
    mode = _HostSyncs()
    closure = _recorded_closure(opt, mode, fns, x)
    with mode:
        for _ in range(3):
            opt.step(closure)
    assert mode.seen == []
    # the detector works: the default (early exit) reads `active.any()` back once per iteration
    opt2 = BatchedLBFGS([x], lr=1.0, max_iter=20, history_size=5)
    mode2 = _HostSyncs()
    with mode2:
        opt2.step(_recorded_closure(opt2, mode2, fns, x))
    assert "__bool__" in mode2.seen


def test_stalled_marks_problems_a_step_left_in_place():
    fns, x0s = _three_problems()
    traj, opt = batched_trajectory(fns, x0s, 8, lr=1.0, max_iter=20, history_size=5)
    stalled = opt.stalled
    # the quadratic reached its minimum and stopped moving; the nonconvex ones still move
    assert stalled.tolist()[2] is True
    torch.testing.assert_close(traj[-1, 2], traj[-2, 2], rtol=0, atol=0)
    for p in range(2):
        assert stalled[p] == torch.equal(traj[-1, p], traj[-2, p])
    # a stalled problem is a fixed point: one more step leaves it exactly where it was
    x_before = traj[-1, 2].clone()
    more, _ = batched_trajectory(fns, x0s, 9, lr=1.0, max_iter=20, history_size=5)
    assert torch.equal(more[-1, 2], x_before)
