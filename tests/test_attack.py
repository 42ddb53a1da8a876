"""The attack as a LightningModule: real reconstructions, failures, and the threat-model boundary."""

from __future__ import annotations

import inspect
import math
import re
import sys

import lightning.pytorch as pl
import pytest
import torch

import leakage.attacks.gradient_inversion
from leakage.attacks.settings import LBFGS, Adam, Budget, Dummies, Objective
from leakage.attacks.gradient_inversion import GradientInversion
from leakage.reporting.callbacks import LeakageReport
from leakage.federated.client import save_gradients
from leakage.data.datamodule import VictimDataModule
from leakage.engine.optim import BatchedLBFGS

from conftest import assert_same_outcome, assert_same_update, gradient_inversion, quiet_trainer
from leakage.data.sources import Bundled, CapturedGradients


class LossRecorder(pl.Callback):
    """Per-problem losses after every closure evaluation (the attack's own bookkeeping)."""

    def __init__(self):
        self.losses = []

    def on_before_backward(self, trainer, pl_module, loss):
        self.losses.append(pl_module.problem_losses.detach().clone())


class PointRecorder(pl.Callback):
    """Every closure evaluation: the per-problem losses and the dummies they were evaluated at."""

    def __init__(self):
        self.losses, self.points = [], []

    def on_before_backward(self, trainer, pl_module, loss):
        self.losses.append(pl_module.problem_losses.detach().clone())
        self.points.append(pl_module.dummy_data.detach().clone())


def attack(tmp_path, dm, steps, save=False, callbacks=(), **hparams):
    module = gradient_inversion(input_shape=dm.input_shape, num_classes=dm.num_classes, **hparams)
    report = LeakageReport(save_artifacts=save)
    trainer = quiet_trainer(steps, [report, *callbacks], root=tmp_path)
    trainer.fit(module, datamodule=dm)
    return module, report, trainer


# ------------------------------------------------------------------------ real reconstruction
def test_idlg_lbfgs_reconstructs_an_mnist_digit(tmp_path):
    dm = VictimDataModule(Bundled("mnist"), indices=[3])
    module, report, trainer = attack(
        tmp_path, dm, 10, model="lenet", labels="idlg", optimizer="lbfgs", distance="l2"
    )
    assert trainer.global_step == 10
    (row,) = report.rows
    assert row["status"] == "ok"
    assert row["indices"] == [3] and row["true_labels"] == [0] and row["recovered_labels"] == [0]
    assert row["ssim"] > 0.9, row
    assert row["psnr"] > 25 and row["mse"] < 5e-3
    assert row["grad_l2"] < 1e-2
    assert report.summary["success"] == 1 and report.summary["label_acc"] == 1.0
    assert report.summary["ssim_mean"] == pytest.approx(row["ssim"])
    # the matching loss went down by orders of magnitude over the run
    assert report.history[-1][0] < 1e-3 * report.history[0][0]


def test_joint_labels_with_restarts_keep_the_best(tmp_path):
    """DLG's joint soft labels; with 3 restarts the reported one has the lowest final loss."""
    dm = VictimDataModule(Bundled("mnist"), indices=[0, 1])
    rec = PointRecorder()
    module, report, _ = attack(
        tmp_path, dm, 3, model="mlp", labels="joint", restarts=3, init="uniform", max_iter=10, callbacks=[rec]
    )
    assert module.num_problems == 6
    final = module.final_evaluation()["loss"].view(2, 3)
    for v, row in enumerate(report.rows):
        assert row["best_restart"] == int(final[v].argmin())
        assert row["final_loss"] == pytest.approx(float(final[v].min()))
    assert module.dummy_labels.shape == (6, 1, 10)
    # each problem reports the lowest-loss point L-BFGS evaluated (its trial points and the point
    # where the last step ended), and the loss reported is the one evaluated at that very point
    with torch.no_grad():
        end = module.matching_loss()
    losses = torch.cat([torch.stack(rec.losses), end[None]])
    points = torch.cat([torch.stack(rec.points), module.dummy_data.detach()[None]])
    best = losses.argmin(dim=0)
    for p in range(6):
        assert torch.equal(module.reconstruction()[p], points[best[p], p])
        assert float(module.best_losses[p]) == pytest.approx(float(losses[best[p], p]), rel=1e-5)
    assert torch.allclose(final.flatten(), module.best_losses, rtol=1e-4)


@pytest.mark.parametrize("optimizer", ["adam", "signed_adam"])
def test_adam_variants_reduce_the_loss(tmp_path, optimizer):
    dm = VictimDataModule(Bundled("mnist"), indices=[0, 1])
    rec = LossRecorder()
    module, report, trainer = attack(
        tmp_path, dm, 15, model="mlp", labels="idlg", optimizer=optimizer, lr=0.05, distance="cosine",
        tv_weight=0.01, box_constraint=True, lr_decay=True, init="uniform", callbacks=[rec],
    )
    first, last = rec.losses[0], rec.losses[-1]
    assert bool((last < first).all())
    assert all(r["status"] == "ok" for r in report.rows)
    # the box constraint keeps the dummies in the data range
    dummies = module.dummy_data.detach()
    assert float(dummies.min()) >= 0.0 and float(dummies.max()) <= 1.0
    # step decay at 3/8, 5/8, 7/8 of 15 steps: lr / 1000 at the end
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.milestones == {5: 1, 9: 1, 13: 1}
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05e-3)


# ------------------------------------------------------------------------------ best iterate
def test_the_report_is_the_best_iterate_not_the_last(tmp_path):
    """Adam with a learning rate too large for the problem: the loss falls, then the iterates
    overshoot and climb away. The report is the evaluated point with the lowest loss, its loss and
    SSIM that point's (a linear target: a few milliseconds per step)."""
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    dm = VictimDataModule(Bundled("mnist"), indices=[3])
    rec = PointRecorder()
    module, report, _ = attack(tmp_path, dm, 30, model=linear, labels="idlg", init="uniform", optimizer="adam",
                               lr=0.5, callbacks=[rec])
    losses = torch.stack(rec.losses)[:, 0]
    truth = dm.secret.images
    with torch.no_grad():
        last_loss = float(module.matching_loss()[0])
    last = float(module.kind.evaluate(module.dummy_data.detach(), truth)["score"][0])
    best = int(losses.argmin())
    (row,) = report.rows
    assert row["status"] == "ok"
    # the run got worse: its last iterate is well above the best loss it evaluated
    assert last_loss > 1.2 * float(losses[best])
    # the report is that best point, its loss recomputed there
    assert torch.equal(module.reconstruction(), rec.points[best])
    assert row["final_loss"] == pytest.approx(float(losses[best]), rel=1e-4)
    kept = float(module.kind.evaluate(rec.points[best], truth)["score"][0])
    assert row["ssim"] == pytest.approx(kept, abs=1e-6)
    assert row["ssim"] > last + 0.1, (row["ssim"], last)


# ------------------------------------------------------------------------------ NaN mid-attack
def test_a_victim_that_goes_nan_mid_attack_is_reported_failed(tmp_path):
    # MLP target, constant init, L-BFGS with lr 10: the problems of some victims (#1 and #2 here)
    # overflow after a few finite iterations, the others' do not
    dm = VictimDataModule(Bundled("mnist"), indices=[0, 1, 2, 4])
    rec = LossRecorder()
    module, report, _ = attack(
        tmp_path, dm, 3, model="mlp", labels="idlg", init="constant", lr=10.0, callbacks=[rec]
    )
    losses = torch.stack(rec.losses)  # [evaluations, victims]
    failed = module.failed.tolist()
    assert any(failed) and not all(failed)
    assert [r["status"] for r in report.rows] == ["failed" if f else "ok" for f in failed]
    assert report.summary["failed"] == sum(failed) and report.summary["victims"] == 4
    for v, row in enumerate(report.rows):
        if failed[v]:
            # it really goes non-finite mid-attack: finite for a while, then not
            assert bool(torch.isfinite(losses[:3, v]).all())
            assert not bool(torch.isfinite(losses[:, v]).all())
        else:
            assert bool(torch.isfinite(losses[:, v]).all())
            for key in ("ssim", "psnr", "mse", "grad_l2", "grad_cosine", "final_loss", "label_acc"):
                assert math.isfinite(row[key]), key
    # the failed problems were frozen at a finite point
    assert bool(torch.isfinite(module.dummy_data.detach()).all())


def test_victim_with_overflowing_gradient_fails_alone(tmp_path, mlp_mnist):
    """A captured update so large that the l2 distance overflows fails; the other is unaffected."""
    dm = VictimDataModule(Bundled("mnist"), indices=[0, 1])
    module = GradientInversion(model="mlp", input_shape=(1, 28, 28), num_classes=10, labels="idlg", dummies=Dummies(init="constant"))
    obs = dm.prepare(module.target)
    clean = {k: v.clone() for k, v in obs.gradients.items()}
    for v in obs.gradients.values():
        v[1] *= 1e30
    report = LeakageReport(save_artifacts=False)
    quiet_trainer(3, [report], root=tmp_path).fit(module, datamodule=dm)
    assert [r["status"] for r in report.rows] == ["ok", "failed"]
    assert report.rows[0]["ssim"] > 0.9  # the healthy victim is still reconstructed
    assert not math.isfinite(report.rows[1]["grad_l2"])

    # and victim 0 ends where it ends without the broken neighbour
    dm0 = VictimDataModule(Bundled("mnist"), indices=[0])
    solo = GradientInversion(model="mlp", input_shape=(1, 28, 28), num_classes=10, labels="idlg", dummies=Dummies(init="constant"))
    dm0.prepare(solo.target)
    # computed alone or beside another victim: the same update to float32 rounding (not bit for bit:
    # floating point promises no more across batch sizes or library versions)
    assert_same_update({k: g[0] for k, g in dm0.observation.gradients.items()}, {k: g[0] for k, g in clean.items()})
    report0 = LeakageReport(save_artifacts=False)
    quiet_trainer(3, [report0], root=tmp_path).fit(solo, datamodule=dm0)
    assert report0.rows[0]["ssim"] == pytest.approx(report.rows[0]["ssim"], abs=1e-3)


# ----------------------------------------------------------------------- threat-model boundary
def test_attack_source_never_mentions_the_secret():
    for mod in (leakage.attacks.gradient_inversion, leakage.engine.optim, leakage.engine.losses, leakage.attacks.labels):
        assert not re.search("secret", inspect.getsource(mod), re.IGNORECASE), mod.__name__


def test_attack_on_captured_gradients_without_victim_data(tmp_path):
    kw = dict(model="lenet", labels="idlg", max_iter=5)
    # the client side: compute and save the shared updates
    bundled = VictimDataModule(Bundled("mnist"), indices=[2, 3])
    ref_module, ref_report, _ = attack(tmp_path / "a", bundled, 2, **kw)
    path = tmp_path / "captured.safetensors"
    save_gradients(bundled.observation.gradients, path)

    # the attacker's side: only the gradient file
    dm = VictimDataModule(CapturedGradients(dataset="mnist", gradient_file=str(path)))
    module, report, trainer = attack(tmp_path / "b", dm, 2, save=True, **kw)
    assert dm.secret is None
    assert len(report.rows) == 2
    for row, ref in zip(report.rows, ref_report.rows):
        assert math.isnan(row["ssim"]) and math.isnan(row["psnr"]) and math.isnan(row["mse"])
        assert math.isfinite(row["grad_l2"])
        assert row["indices"] == [] and row["true_labels"] == []
        assert row["recovered_labels"] == ref["true_labels"]  # iDLG needs no secret
        assert row["status"] == "ok"
    assert "ssim_mean" not in report.summary and math.isfinite(report.summary["grad_l2_mean"])
    run = report.run_dir
    assert (run / "metrics.json").is_file() and (run / "gallery.png").is_file()
    assert str(run).startswith(str(tmp_path))


def test_the_secret_has_no_influence_on_the_attack(tmp_path):
    """The same observation with and without the victims' images: the same dummies, step for step."""
    kw = dict(model="lenet", labels="idlg", max_iter=5)
    seen = VictimDataModule(Bundled("mnist"), indices=[2, 3])
    ref_module, ref_report, _ = attack(tmp_path / "a", seen, 2, **kw)
    blind = VictimDataModule(Bundled("mnist"), indices=[2, 3])
    blind.prepare(gradient_inversion(input_shape=blind.input_shape, num_classes=10, **kw).target)
    blind.secret = None  # the attacker's view: the observation alone
    module, report, _ = attack(tmp_path / "b", blind, 2, **kw)
    assert torch.equal(module.dummy_data, ref_module.dummy_data)
    assert [r["grad_l2"] for r in report.rows] == [r["grad_l2"] for r in ref_report.rows]
    assert all(math.isnan(r["ssim"]) for r in report.rows)


# ------------------------------------------------------------------------------ bad settings
@pytest.mark.parametrize(
    "make, message",
    [  # each settings object refuses its own bad settings
        (lambda: Objective(distance="l1"), "unknown distance 'l1'; choose one of l2, cosine"),
        (lambda: Objective(tv_weight=-0.1), "tv_weight must be >= 0 (0: off), got -0.1"),
        (lambda: Objective(problems_per_chunk=0), "problems_per_chunk must be >= 1, got 0"),
        (lambda: Dummies(init="zeros"), "unknown init 'zeros'; choose one of randn, uniform, constant"),
        (lambda: Dummies(restarts=0), "restarts must be >= 1, got 0"),
        (lambda: Dummies(ensemble="vote"), "unknown ensemble 'vote'; choose one of best, pool"),
        (lambda: Adam(lr=0.0), "lr must be > 0, got 0.0"),
        (lambda: LBFGS(tolerance_change=-1.0), "tolerance_change must be >= 0, got -1.0"),
        (lambda: LBFGS(history_size=0), "history_size must be >= 1, got 0"),
        (lambda: Budget(refine_steps=-1), "refine_steps must be >= 0 (0: off), got -1"),
        (lambda: Budget(refine_steps=5).check(5), "refine_steps (5) must be below --trainer.max_steps (5)"),
        # the attack refuses its own arguments and a combination of objects that cannot run
        (lambda: GradientInversion(labels="oracle"), "unknown label strategy 'oracle'; choose one of joint, idlg"),
        (lambda: GradientInversion(model="vgg"), "unknown model 'vgg'"),
        (lambda: GradientInversion(optimizer="lbfgs"),
         "optimizer must be a leakage.attacks.settings.Optimizer, got str"),
        (lambda: GradientInversion(optimizer=LBFGS(), budget=Budget(refine_steps=3)),
         "budget.refine_steps needs optimizer Adam or SignedAdam"),
        # settings by name (the Python API's options)
        (lambda: gradient_inversion(optimizer="sgd"), "unknown optimizer 'sgd'; choose one of lbfgs, adam, signed_adam"),
        (lambda: gradient_inversion(optimizer="adam", max_iter=3),
         "unknown attack option 'max_iter' (with optimizer 'adam'); the settings are: "),
    ],
)
def test_bad_hyperparameters(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_idlg_needs_batch_size_one(tmp_path):
    dm = VictimDataModule(Bundled("mnist"), indices=[0, 1], batch_size=2)
    module = GradientInversion(model="mlp", input_shape=dm.input_shape, num_classes=10, labels="idlg")
    with pytest.raises(ValueError, match="single image: use batch_size 1, labels 'joint' or a batch strategy"):
        quiet_trainer(1, root=tmp_path).fit(module, datamodule=dm)


def test_observation_must_fit_the_model(lenet_cifar):
    dm = VictimDataModule(Bundled("cifar10"))
    obs = dm.prepare(lenet_cifar)
    module = GradientInversion(model="lenet", input_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ValueError, match=r"input shape \(3, 32, 32\) and 10 classes, the model was built for \(1, 28, 28\)"):
        module.attach(obs)


def test_missing_step_budget(tmp_path):
    dm = VictimDataModule(Bundled("mnist"))
    module = GradientInversion(model="mlp", input_shape=dm.input_shape, num_classes=10)
    trainer = pl.Trainer(max_steps=-1, max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match="--trainer.max_steps N"):
        trainer.fit(module, datamodule=dm)


def test_batched_lbfgs_is_configured_from_hparams(tmp_path):
    dm = VictimDataModule(Bundled("mnist"))
    module, _, trainer = attack(tmp_path, dm, 1, model="mlp", lr=0.5, max_iter=7, history_size=3,
                                tolerance_grad=1e-12, tolerance_change=0.0)
    opt = trainer.optimizers[0]
    assert isinstance(opt, BatchedLBFGS)
    group = opt.param_groups[0]
    assert (group["lr"], group["max_iter"], group["history_size"]) == (0.5, 7, 3)
    assert (group["tolerance_grad"], group["tolerance_change"]) == (1e-12, 0.0)
    assert int(opt.state["problems"]["n_iter"][0]) == 7


# ------------------------------------------------------------------------ problems_per_chunk
@pytest.mark.parametrize("labels", ["joint", "idlg"])
def test_chunked_evaluation_gives_the_same_losses_and_gradients(labels):
    dm = VictimDataModule(Bundled("mnist"), num_victims=3)
    results = []
    for chunk in (None, 2):
        module = GradientInversion(input_shape=dm.input_shape, labels=labels, objective=Objective(problems_per_chunk=chunk), dummies=Dummies(restarts=2))
        module.attach(dm.prepare(module.target))
        subset = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)  # problem 2 is not evaluated
        losses = module.matching_loss(subset=subset)
        losses.nansum().backward()
        grads = [module.dummy_data.grad.clone()] + ([module.dummy_labels.grad.clone()] if labels == "joint" else [])
        results.append((losses.detach(), grads))
    (l0, g0), (l1, g1) = results
    assert torch.isnan(l1[2]) and torch.isfinite(l1[subset]).all()
    torch.testing.assert_close(l1, l0, equal_nan=True)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert a[2].abs().max() == 0  # the problem that was not evaluated gets no gradient


def test_chunks_of_consecutive_problems_give_the_losses_and_gradients_of_one_evaluation():
    """Without a subset the chunks are slices (views of the dummies and observed gradients, no copies);
    cosine and TV, whose observed-gradient norm is computed once, give the same numbers."""
    dm = VictimDataModule(Bundled("mnist"), num_victims=2)
    results = []
    for chunk in (None, 1):
        module = GradientInversion(input_shape=dm.input_shape, labels="idlg", objective=Objective(problems_per_chunk=chunk, distance="cosine", tv_weight=1e-3), dummies=Dummies(restarts=2))
        module.attach(dm.prepare(module.target))
        assert module._chunks(4, None, 3) == [slice(0, 3), slice(3, 4)]
        losses = module.matching_loss()
        losses.sum().backward()
        with torch.no_grad():
            unbatched = module.matching_loss()
        results.append((losses.detach(), unbatched, module.dummy_data.grad.clone()))
    (l0, n0, g0), (l1, n1, g1) = results
    torch.testing.assert_close(l1, l0)
    torch.testing.assert_close(n1, l1, rtol=0, atol=0)  # chunked without grad: the same chunks
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-6)


def test_large_models_evaluate_one_problem_at_a_time_on_the_cpu():
    big = GradientInversion(model="resnet18")  # 11.2M parameters
    assert sum(p.numel() for p in big.target.parameters()) >= leakage.attacks.matching.SERIAL_PARAMETERS
    assert big.problems_at_once() == 1 and big.problems_at_once(torch.device("cuda")) is None
    assert GradientInversion(model="resnet18", objective=Objective(problems_per_chunk=3)).problems_at_once() == 3
    assert GradientInversion(model="resnet18", objective=Objective(compile="on")).problems_at_once() is None
    assert GradientInversion(model="lenet").problems_at_once() is None  # small: batched with vmap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_kept_in_the_process_on_linux():
    """The CPU attack keeps freed pages (no page faults every step): glibc takes the settings."""
    from leakage.engine.allocator import keep_freed_memory

    assert keep_freed_memory() and keep_freed_memory()  # set, and setting again is harmless


def test_final_evaluation_gives_each_distance_as_its_own_evaluation_would():
    dm = VictimDataModule(Bundled("mnist"), num_victims=2)
    module = GradientInversion(input_shape=dm.input_shape, labels="joint", objective=Objective(distance="l2", tv_weight=1e-2))
    module.attach(dm.prepare(module.target))
    final = module.final_evaluation()
    x, labels = module._reported()
    with torch.no_grad():
        for key, distance, prior in (("loss", None, True), ("grad_l2", "l2", False), ("grad_cosine", "cosine", False)):
            assert torch.equal(final[key], module._objective(x, labels, None, distance, prior)), key


def test_chunked_attack_follows_the_unchunked_one(tmp_path):
    dm = VictimDataModule(Bundled("mnist"), num_victims=3)
    runs = [attack(tmp_path / str(c), dm, 4, labels="idlg", restarts=1, problems_per_chunk=c, max_iter=5)[1]
            for c in (None, 1)]
    assert_same_outcome(runs[0].rows, runs[1].rows)


def test_problems_per_chunk_must_be_positive():
    with pytest.raises(ValueError, match="problems_per_chunk"):
        GradientInversion(objective=Objective(problems_per_chunk=0))


# ------------------------------------------------------------------------ group consistency
def test_group_consistency_needs_restarts():
    with pytest.raises(ValueError, match=r"needs dummies.restarts >= 2"):
        GradientInversion(objective=Objective(group_weight=0.1), dummies=Dummies(restarts=1))


def test_consensus_aligns_restarts_by_label_before_averaging():
    # two victims' updates (batches of 3 MNIST digits, labels with a repeat), 3 restarts each
    dm = VictimDataModule(Bundled("mnist"), num_victims=2, batch_size=3)
    module = GradientInversion(model="mlp", input_shape=dm.input_shape, num_classes=10, labels="bias_count", objective=Objective(group_weight=1.0), dummies=Dummies(restarts=3))
    module.attach(dm.prepare(module.target))
    labels = module.recovered_labels().view(2, 3, 3)
    assert torch.equal(labels[:, 0], labels[:, 1])  # restored labels are the same for every restart
    base = torch.rand(2, 3, 1, 28, 28)  # what each victim's restarts should agree on, in slot order
    noise = [torch.randn(2, 3, 1, 28, 28) * 0.01 for _ in range(3)]
    x = torch.stack([base + noise[0], base.flip(1) + noise[1], base + noise[2]], dim=1)  # restart 1: slots reversed
    # slots may only be swapped between equal labels: give each victim's batch one label three times
    module.fixed_labels = torch.zeros_like(module.fixed_labels)
    with torch.no_grad():
        module.dummy_data.copy_(x.flatten(0, 1))
    module.update_consensus()
    target = module.consensus.view(2, 3, 3, 1, 28, 28)
    mean = (noise[0] + noise[1].flip(1) + noise[2]) / 3 + base
    torch.testing.assert_close(target[:, 0], mean)
    torch.testing.assert_close(target[:, 1], mean.flip(1))  # back in restart 1's own slot order
    torch.testing.assert_close(target[:, 2], mean)
    # with distinct labels per slot, reversed slots are not matched across labels
    module.fixed_labels = torch.arange(3).repeat(6, 1)
    module.update_consensus()
    torch.testing.assert_close(module.consensus.view(2, 3, 3, 1, 28, 28)[:, 1], (x[:, 0] + x[:, 1] + x[:, 2]) / 3)


def test_group_consistency_pulls_restarts_together(tmp_path):
    def spread(weight):
        dm = VictimDataModule(Bundled("mnist"), num_victims=1, batch_size=2)
        module, _, _ = attack(tmp_path, dm, 10, model="mlp", labels="bias_count", restarts=3, init="uniform",
                              optimizer="adam", lr=0.05, group_weight=weight)
        x = module.dummy_data.detach()
        return float((x - x.mean(0, keepdim=True)).pow(2).mean())

    assert spread(200.0) < 0.5 * spread(0.0)
