"""Budgets that adapt (leakage.engine.stopping): a problem stops when its loss has converged or stalled, and
the run ends when every problem has stopped, before max_steps."""

from __future__ import annotations

import pytest
import torch

from leakage.attacks.settings import Budget
from leakage.data.datamodule import VictimDataModule
from leakage.engine.metrics import ssim_per_image

from conftest import gradient_inversion, quiet_trainer
from leakage.data.sources import Bundled


def _fit(tmp_path, steps, indices=(0, 3), **hparams):
    dm = VictimDataModule(Bundled("mnist"), indices=list(indices))
    module = gradient_inversion(model="lenet", input_shape=(1, 28, 28), labels="idlg", init="uniform", **hparams)
    trainer = quiet_trainer(steps, [], root=tmp_path)
    trainer.fit(module, datamodule=dm)
    return module, trainer, dm


def test_a_converged_run_ends_early_with_its_images_back(tmp_path):
    """Loss below stop_loss: the problem stops and the run ends well before max_steps (measured: after
    6 of 60 steps, SSIM 0.904), with its image back."""
    module, trainer, dm = _fit(tmp_path, 60, indices=(3,), stop_loss=1e-3)
    assert trainer.global_step < 20
    assert bool(module.stopping.stopped.all()) and not bool(module.failed.any())
    assert bool((module.problem_losses <= 1e-3).all())
    ssim = ssim_per_image(module.dummy_data.detach()[:, 0].clamp(0, 1), dm.secret.images[:, 0])
    assert bool((ssim > 0.85).all()), ssim


def test_a_relative_threshold_stops_each_problem_at_its_own_scale(tmp_path):
    """stop_relative R stops a problem once its loss is at most R x its observed gradient's squared norm
    (measured: both images stopped after 6 of 60 steps, loss 4e-4 and 5e-4 against scales 890 and 756,
    SSIM 0.89 and 0.90), with their images back."""
    module, trainer, dm = _fit(tmp_path, 60, stop_relative=1e-6)
    assert trainer.global_step < 20 and bool(module.stopping.stopped.all())
    scale = sum(o.double().flatten(1).pow(2).sum(1) for o in module.observed())
    torch.testing.assert_close(module.loss_scale, scale)
    assert bool((module.problem_losses.double() <= 1e-6 * scale).all())
    ssim = ssim_per_image(module.reconstruction()[:, 0].clamp(0, 1), dm.secret.images[:, 0])
    assert bool((ssim > 0.8).all()), ssim


def test_a_stalled_problem_is_stopped_where_it_stood(tmp_path):
    """Demanding a 99.99% improvement every 2 steps stalls every problem early: each is left where its
    rule stopped it (what a fixed budget of that many steps gives it) and the run ends before max_steps."""
    kw = dict(max_iter=3)
    module, trainer, _ = _fit(tmp_path / "a", 40, stall_steps=2, stall_improvement=0.9999, **kw)
    at = module.stopping.stopped_at
    assert bool(module.stopping.stopped.all()) and trainer.global_step < 40
    assert trainer.global_step == int(at.max())
    first = int(at.argmin())  # stopped while the other problem went on
    alone, _, _ = _fit(tmp_path / "b", int(at[first]), indices=((0, 3)[first],), **kw)
    # up to float32 rounding (the convolutions see batches of 2 and of 1)
    torch.testing.assert_close(module.dummy_data.detach()[first], alone.dummy_data.detach()[0], rtol=0, atol=1e-4)


def test_adam_rows_of_stopped_problems_stay_put(tmp_path):
    """Adam moves every row (momentum): a stopped problem's rows are put back where it stopped."""
    kw = dict(optimizer="adam", lr=0.05)
    module, trainer, _ = _fit(tmp_path / "a", 30, stall_steps=2, stall_improvement=0.3, **kw)
    at = module.stopping.stopped_at
    assert bool(module.stopping.stopped.all()) and trainer.global_step < 30
    first = int(at.argmin())
    alone, _, _ = _fit(tmp_path / "b", int(at[first]), indices=((0, 3)[first],), **kw)
    torch.testing.assert_close(module.dummy_data.detach()[first], alone.dummy_data.detach()[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("settings, message", [
    ({"stall_steps": -1}, "stall_steps must be an integer >= 0"),
    ({"stall_improvement": 0.1}, "stall_improvement 0.1 needs stall_steps >= 1"),
    ({"stall_steps": 5, "stall_improvement": 1.5}, "stall_improvement is a relative change: it must be in [0, 1)"),
    ({"stop_change": -0.1}, "stop_change is a relative change"),
    ({"stop_loss": -1.0}, "stop_loss must be >= 0"),
    ({"stop_loss": float("nan")}, "stop_loss must be a finite number"),
    ({"stop_relative": 1.0}, "stop_relative is a fraction of each problem's loss scale: it must be in [0, 1)"),
    ({"stop_relative": -1e-9}, "stop_relative is a fraction"),
    ({"stop_relative": float("inf")}, "stop_relative must be a finite number"),
])
def test_bad_stopping_settings_are_one_line_errors(settings, message):
    with pytest.raises(ValueError, match=None) as err:
        Budget(**settings)
    assert message in str(err.value) and "\n" not in str(err.value)
