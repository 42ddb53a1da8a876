"""The engine's fixed-shape path and stopping when done, through the LightningModule."""

from __future__ import annotations

import pytest
import torch

from leakage.attacks.settings import Budget, Dummies, Objective
from leakage.attacks.gradient_inversion import GradientInversion
from leakage.data.datamodule import VictimDataModule

from conftest import gradient_inversion, quiet_trainer
from test_optim import _HostSyncs
from leakage.data.sources import Bundled


def _fit(tmp_path, steps, indices=(0, 3), **hparams):
    dm = VictimDataModule(Bundled("mnist"), indices=list(indices))
    module = gradient_inversion(model="lenet", input_shape=(1, 28, 28), labels="idlg", init="uniform", **hparams)
    trainer = quiet_trainer(steps, [], root=tmp_path)
    trainer.fit(module, datamodule=dm)
    return module, trainer


def test_fixed_shape_attack_follows_the_variable_one(tmp_path):
    """Evaluating every problem with masks instead of indexing the active ones: the same attack
    (up to float32 rounding, the batches the convolutions see differ)."""
    var, _ = _fit(tmp_path / "a", 2, fixed_shape=False, max_iter=4)
    fixed, _ = _fit(tmp_path / "b", 2, fixed_shape=True, max_iter=4)
    fixed_all, _ = _fit(tmp_path / "c", 2, fixed_shape=True, early_exit=False, max_iter=4)
    assert fixed.fixed_shape and not var.fixed_shape
    start = GradientInversion(model="lenet", input_shape=(1, 28, 28), labels="idlg", dummies=Dummies(init="uniform"))
    moved = (var.dummy_data.detach() - start.initial_dummies(fixed.observation)[0]).abs().amax()
    assert moved > 0.1  # the attack really moved the dummies
    for other in (fixed, fixed_all):
        torch.testing.assert_close(other.dummy_data.detach(), var.dummy_data.detach(), rtol=0, atol=1e-4)
        torch.testing.assert_close(other.problem_losses, var.problem_losses, rtol=1e-3, atol=1e-9)


def test_fixed_shape_evaluation_reads_nothing_back(tmp_path):
    dm = VictimDataModule(Bundled("mnist"), indices=[0, 3, 5])
    module = GradientInversion(model="lenet", input_shape=(1, 28, 28), labels="joint", objective=Objective(fixed_shape=True))
    module.attach(dm.prepare(module.target))
    subset = torch.tensor([True, False, True])
    mode = _HostSyncs()
    with mode:
        losses = module.matching_loss(subset=subset)
        losses.nansum().backward()
    assert mode.seen == []
    assert torch.isnan(losses[1]) and bool(torch.isfinite(losses[[0, 2]]).all())
    assert float(module.dummy_data.grad[1].abs().max()) == 0.0
    # the variable shape gives the same rows, by indexing (which reads the mask back)
    variable = GradientInversion(model="lenet", input_shape=(1, 28, 28), labels="joint", objective=Objective(fixed_shape=False))
    variable.attach(dm.prepare(variable.target))
    mode = _HostSyncs()
    with mode, torch.no_grad():
        ref = variable.matching_loss(subset=subset)
    assert mode.seen
    torch.testing.assert_close(losses[[0, 2]].detach(), ref[[0, 2]], rtol=1e-5, atol=0)


def test_the_run_stops_when_every_problem_is_done(tmp_path):
    """Once every problem sits at an L-BFGS fixed point the run ends, with the result of the full budget."""
    kw = dict(indices=(3,), tolerance_change=1e-5)  # converges in about 10 steps
    early, trainer = _fit(tmp_path / "a", 25, **kw)
    assert trainer.global_step < 25
    assert bool(early.done().all()) and not bool(early.failed.any())
    assert float(early.problem_losses[0]) < 1e-2
    full, trainer_full = _fit(tmp_path / "b", 25, check_done_every=0, **kw)
    assert trainer_full.global_step == 25
    assert torch.equal(full.dummy_data.detach(), early.dummy_data.detach())


def test_check_done_every_must_not_be_negative():
    with pytest.raises(ValueError, match="check_done_every"):
        GradientInversion(budget=Budget(check_done_every=-1))


def test_compile_failure_falls_back_to_eager_in_one_line(tmp_path, monkeypatch):
    calls = []

    def broken_compile(fn, **kwargs):
        calls.append(kwargs)

        def run(*args, **kw):
            raise RuntimeError("no C compiler here\nsecond line of the compiler's story")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning) as caught:
        compiled, _ = _fit(tmp_path / "a", 2, compile="on", max_iter=3)
    messages = [str(w.message) for w in caught if "torch.compile" in str(w.message)]
    assert messages == ["torch.compile failed (RuntimeError: no C compiler here); the attack runs eagerly"]
    assert calls == [{"mode": None, "dynamic": False}]
    assert compiled.fixed_shape and not compiled.compiled
    eager, _ = _fit(tmp_path / "b", 2, compile="off", fixed_shape=True, max_iter=3)
    assert torch.equal(compiled.dummy_data.detach(), eager.dummy_data.detach())


def test_compile_settings_are_checked():
    with pytest.raises(ValueError, match="compile setting"):
        GradientInversion(objective=Objective(compile="maybe"))
    with pytest.raises(ValueError, match="fixed shapes"):
        GradientInversion(objective=Objective(compile="on", fixed_shape=False))
    assert not GradientInversion().compiled  # auto: off on the CPU
    assert not GradientInversion().fixed_shape
