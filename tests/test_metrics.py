"""Reconstruction metrics, batch matching, label accuracy, gradient distances and the report table."""

from __future__ import annotations

import math

import pytest
import torch

from leakage.records import summarize
from leakage.reporting.runreport import format_table
from leakage.data.datamodule import VictimDataModule
from leakage.engine.losses import gradient_distance, squared_norms, total_variation
from leakage.engine.metrics import label_accuracy, match_batch, reconstruction_metrics
from leakage.data.sources import Bundled


@pytest.fixture(scope="module")
def cifar_batch():
    return VictimDataModule(Bundled("cifar10"), num_victims=5).load_victims().images[:, 0]


def test_match_batch_undoes_a_permutation(cifar_batch):
    truth = cifar_batch  # [5, 3, 32, 32]
    order = torch.tensor([3, 0, 4, 1, 2])
    recon = truth[order] + 0.02 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    perm = match_batch(recon, truth)
    assert sorted(perm.tolist()) == list(range(5))
    # recon[perm[i]] is the reconstruction of truth[i]
    assert torch.equal(order[perm], torch.arange(5))
    assert match_batch(truth[:1], truth[:1]).tolist() == [0]


def test_identical_images_give_perfect_scores(cifar_batch):
    truth = cifar_batch.view(5, 1, 3, 32, 32)
    m = reconstruction_metrics(truth.clone(), truth)
    torch.testing.assert_close(m["ssim"], torch.ones(5), atol=1e-5, rtol=0)
    assert torch.equal(m["mse"], torch.zeros(5))
    assert bool(torch.isinf(m["psnr"]).all() | (m["psnr"] > 80).all())
    assert m["ssim_images"].shape == (5, 1) and m["perm"].shape == (5, 1)


def test_reconstruction_metrics_match_and_clamp(cifar_batch):
    truth = cifar_batch[:4].view(2, 2, 3, 32, 32)
    recon = truth.flip(1).clone()  # each victim's two images swapped
    recon[0, 0, 0, 0, 0] = 5.0  # out of range: clamped to 1 before scoring
    m = reconstruction_metrics(recon, truth)
    assert m["perm"].tolist() == [[1, 0], [1, 0]]
    assert float(m["ssim"][1]) == pytest.approx(1.0, abs=1e-5)
    expected_mse = ((1.0 - truth[0, 1, 0, 0, 0]) ** 2 / (3 * 32 * 32) / 2).item()
    assert float(m["mse"][0]) == pytest.approx(expected_mse, rel=1e-4)
    noisy = (truth + 0.1 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    mn = reconstruction_metrics(noisy, truth)
    assert bool((mn["ssim"] < 0.95).all()) and bool((mn["psnr"] > 15).all() & (mn["psnr"] < 25).all())
    # PSNR is consistent with MSE: 10 log10(1 / mse) per image
    per_image = ((noisy - truth) ** 2).flatten(2).mean(2)
    torch.testing.assert_close(mn["psnr"], (10 * torch.log10(1 / per_image)).mean(1), rtol=1e-4, atol=1e-3)


def test_label_accuracy_is_order_free():
    true = torch.tensor([[1, 2, 3], [4, 4, 5]])
    assert label_accuracy(torch.tensor([[3, 1, 2], [4, 5, 4]]), true).tolist() == [1.0, 1.0]
    acc = label_accuracy(torch.tensor([[3, 3, 2], [4, 4, 4]]), true)
    torch.testing.assert_close(acc, torch.tensor([2 / 3, 2 / 3]))
    assert label_accuracy(torch.tensor([[7], [0]]), torch.tensor([[7], [1]])).tolist() == [1.0, 0.0]


def test_gradient_distances():
    g = [torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[[1.0]], [[2.0]]])]
    o = [torch.tensor([[1.0, 0.0], [0.0, -1.0]]), torch.tensor([[[3.0]], [[2.0]]])]
    torch.testing.assert_close(gradient_distance(g, o, "l2"), torch.tensor([8.0, 4.0]))
    cos = gradient_distance(g, o, "cosine")
    a = torch.tensor([1.0, 2.0, 1.0])
    b = torch.tensor([1.0, 0.0, 3.0])
    torch.testing.assert_close(cos[0], 1 - a @ b / (a.norm() * b.norm()))
    # scale invariance of the cosine distance, and 0 for identical gradients
    torch.testing.assert_close(gradient_distance([5 * x for x in g], o, "cosine"), cos)
    torch.testing.assert_close(gradient_distance(g, g, "cosine"), torch.zeros(2), atol=1e-6, rtol=0)
    assert torch.equal(gradient_distance(g, o, "cosine", squared_norms(o)), cos)  # the norm precomputed
    with pytest.raises(ValueError, match="unknown distance 'l1'; choose one of l2, cosine"):
        gradient_distance(g, o, "l1")


def test_total_variation_per_problem():
    x = torch.zeros(2, 1, 1, 3, 3)
    x[1, 0, 0, :, 1] = 1.0  # a vertical line: 6 horizontal jumps of 1 among 6 pairs
    tv = total_variation(x)
    assert tv.shape == (2,)
    assert tv.tolist() == [0.0, 1.0]


def _row(v, ssim, status="ok", **kw):
    base = dict(victim=v, indices=[v], true_labels=[1], recovered_labels=[1], label_acc=1.0, ssim=ssim,
                psnr=20.0, mse=0.01, grad_l2=0.5, grad_cosine=0.1, final_loss=0.5, best_restart=0, status=status)
    base.update(kw)
    return base


def test_summarize_and_table():
    rows = [_row(0, 0.95), _row(1, 0.5), _row(2, float("nan"), status="failed", psnr=float("nan"), grad_l2=float("nan"))]
    s = summarize(rows, 0.9)
    assert s["victims"] == 3 and s["failed"] == 1 and s["success"] == 1
    assert s["ssim_mean"] == pytest.approx((0.95 + 0.5 + 0.0) / 3)  # a failed victim counts as 0
    assert s["psnr_mean"] == pytest.approx(20.0)
    assert s["grad_l2_mean"] == pytest.approx(0.5)
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["victim", "indices", "true_labels"]
    assert len(lines) == 4 and "failed" in lines[3] and "nan" in lines[3]
    no_images = summarize([_row(0, float("nan"), label_acc=float("nan"))], 0.9)
    assert "ssim_mean" not in no_images and no_images["grad_l2_mean"] == 0.5
    assert math.isnan(summarize([_row(0, 0.5, status="failed")], 0.9)["grad_l2_mean"])
