"""The client and the attack run in full float32: no TF32 or bf16 shortcut, the user's settings restored."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

import leakage.attacks.matching
import leakage.federated.client
from leakage.attacks.settings import LBFGS
from leakage.attacks.gradient_inversion import GradientInversion
from leakage.reporting.callbacks import LeakageReport
from leakage.data.datamodule import VictimDataModule
from leakage.engine.precision import full_precision, is_full_precision, precision_flags

from conftest import quiet_trainer
from leakage.data.sources import Bundled


@pytest.fixture
def user_allows_tf32():
    """A user who turned every reduced-precision float32 mode on (as cuDNN's default already does)."""
    saved = precision_flags()
    if "torch.backends.fp32_precision" in saved:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("medium")
    user = precision_flags()
    assert not is_full_precision()
    yield user
    for key, value in saved.items():
        if key.endswith(".fp32_precision"):
            obj = torch
            for part in key.split(".")[1:-1]:
                obj = getattr(obj, part)
            obj.fp32_precision = value
    if "torch.backends.fp32_precision" not in saved:
        torch.backends.cuda.matmul.allow_tf32 = saved["torch.backends.cuda.matmul.allow_tf32"]
        torch.backends.cudnn.allow_tf32 = saved["torch.backends.cudnn.allow_tf32"]
        torch.set_float32_matmul_precision(saved["float32_matmul_precision"])
    assert precision_flags() == saved


class BackwardPrecision(pl.Callback):
    """Whether full precision held at every backward of the attack (the outer backward's convolutions)."""

    def __init__(self):
        self.seen = []

    def on_before_backward(self, trainer, pl_module, loss):
        self.seen.append(is_full_precision())


def test_attack_objective_and_client_run_in_full_precision(monkeypatch, tmp_path, user_allows_tf32):
    seen = {"client": [], "objective": []}
    real = leakage.federated.client.per_problem_gradients

    def client_spy(model, x, targets, **kwargs):
        seen["client"].append(is_full_precision())
        return real(model, x, targets, **kwargs)

    def objective_spy(model, x, targets, **kwargs):
        seen["objective"].append(is_full_precision())
        return real(model, x, targets, **kwargs)

    monkeypatch.setattr(leakage.federated.client, "per_problem_gradients", client_spy)
    monkeypatch.setattr(leakage.attacks.matching, "per_problem_gradients", objective_spy)
    dm = VictimDataModule(Bundled("mnist"), indices=[3])
    module = GradientInversion(model="lenet", input_shape=(1, 28, 28), labels="idlg", optimizer=LBFGS(max_iter=3))
    backward = BackwardPrecision()
    quiet_trainer(2, [LeakageReport(save_artifacts=False), backward], root=tmp_path).fit(module, datamodule=dm)
    assert seen["client"] == [True]  # the victim's update
    assert len(seen["objective"]) >= 4 and all(seen["objective"])  # every evaluation, the final ones too
    assert backward.seen and all(backward.seen)
    assert precision_flags() == user_allows_tf32  # the user's settings are back


def test_settings_are_restored_when_the_block_raises(user_allows_tf32):
    with pytest.raises(RuntimeError):
        with full_precision():
            assert is_full_precision()
            raise RuntimeError("boom")
    assert precision_flags() == user_allows_tf32


def _one_mnist_victim(precision, steps, tmp_path):
    dm = VictimDataModule(Bundled("mnist"), indices=[3])
    module = GradientInversion(model="mlp", input_shape=(1, 28, 28), labels="idlg")
    report = LeakageReport(save_artifacts=False)
    trainer = pl.Trainer(max_steps=steps, precision=precision, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, accelerator="cpu", callbacks=[report], default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    return module, report


def test_float64_attack_reconstructs(tmp_path):
    module, report = _one_mnist_victim("64-true", 5, tmp_path)
    assert module.dummy_data.dtype == torch.float64  # the attack really ran in float64
    assert report.rows[0]["ssim"] > 0.99


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true"])
def test_python_api_refuses_reduced_precision(tmp_path, precision):
    # (Lightning runs 16-mixed as bf16-mixed on a CPU)
    with pytest.raises(ValueError, match="precision b?f?16-(mixed|true) is not supported: gradient matching needs full"):
        _one_mnist_victim(precision, 1, tmp_path)
