"""Target models: shapes, seeded weights, DLG's init and weight files."""

from __future__ import annotations

import pytest
import torch

from leakage.models import build_model


@pytest.mark.parametrize("name", ["lenet", "simple_cnn", "mlp"])
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_models_build_and_run(name, shape):
    model = build_model(name, shape, 7)
    assert not model.training  # built in eval mode
    assert model(torch.rand(2, *shape)).shape == (2, 7)


def test_seed_decides_the_weights_and_leaves_global_rng_alone():
    torch.manual_seed(42)
    before = torch.rand(1)
    torch.manual_seed(42)
    a = build_model("lenet", (1, 28, 28), 10, seed=1)
    after = torch.rand(1)
    assert torch.equal(before, after)  # fork_rng: the caller's random stream is untouched
    b = build_model("lenet", (1, 28, 28), 10, seed=1)
    c = build_model("lenet", (1, 28, 28), 10, seed=2)
    for (n, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pb), n
        assert not torch.equal(pa, pc), n


def test_lenet_uses_dlg_uniform_init():
    model = build_model("lenet", (3, 32, 32), 10)
    for n, p in model.named_parameters():
        p = p.detach()
        assert float(p.min()) >= -0.5 and float(p.max()) <= 0.5, n
    w = model.fc.weight.detach()
    assert float(w.abs().max()) > 0.45  # the full U(-0.5, 0.5) range, not PyTorch's small default


def test_weights_file_roundtrip(tmp_path):
    src = build_model("simple_cnn", (1, 28, 28), 10, seed=5)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    got = build_model("simple_cnn", (1, 28, 28), 10, seed=6, weights=str(path))
    for (n, a), (_, b) in zip(src.named_parameters(), got.named_parameters()):
        assert torch.equal(a, b), n
    # a Lightning-style checkpoint dict works as well
    torch.save({"state_dict": src.state_dict()}, path)
    got = build_model("simple_cnn", (1, 28, 28), 10, seed=6, weights=str(path))
    assert torch.equal(got.head[2].bias, src.head[2].bias)


def test_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "mlp.pt"
    torch.save(build_model("mlp", (1, 28, 28), 10).state_dict(), path)
    with pytest.raises(ValueError) as exc:
        build_model("lenet", (1, 28, 28), 10, weights=str(path))
    msg = str(exc.value)
    assert msg.startswith(f"weights file {path} does not fit model 'lenet'")
    assert "\n" not in msg


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model weights file not found"):
        build_model("lenet", (1, 28, 28), 10, weights=str(tmp_path / "none.pt"))


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'resnet'; choose one of lenet, simple_cnn, mlp"):
        build_model("resnet", (3, 32, 32), 10)


@pytest.mark.parametrize(
    "name, shape, reason",
    [
        ("simple_cnn", (3, 3, 3), "Output size is too small"),  # two 2x2 poolings need 4 pixels per side
        ("simple_cnn", (1, 28, 2), "Output size is too small"),
    ],
)
def test_model_that_cannot_take_the_input_shape(name, shape, reason):
    with pytest.raises(ValueError) as exc:
        build_model(name, shape, 10)
    msg = str(exc.value)
    assert msg.startswith(f"model {name!r} cannot take inputs of shape {shape}: ")
    assert reason in msg and "\n" not in msg


@pytest.mark.parametrize(
    "shape, classes, match",
    [
        ((3, 0, 32), 10, r"input_shape must be three positive integers \[C, H, W\] \(images\) or one \[D\] \(table rows\), got \[3, 0, 32\]"),
        ((32, 32), 10, r"input_shape must be three positive integers"),
        ((3, 32, 32), 1, "num_classes must be an integer >= 2, got 1"),
        ((3, 32, 32), 0, "num_classes must be an integer >= 2, got 0"),
    ],
)
def test_bad_shapes_and_class_counts(shape, classes, match):
    with pytest.raises(ValueError, match=match):
        build_model("lenet", shape, classes)


def test_check_model_on_any_module():
    from torch import nn

    from leakage.models import check_model

    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ValueError, match=r"model Sequential cannot take inputs of shape \(3, 8, 8\): "):
        check_model(conv, (3, 8, 8), 10)
    flat = nn.Flatten()
    with pytest.raises(ValueError, match=r"model 'flat' gives \(1, 192\) for one input of shape \(3, 8, 8\), "
                                         r"not \[1, 10\] logits"):
        check_model(flat, (3, 8, 8), 10, "flat")
    mlp = build_model("mlp", (3, 8, 8), 10).train()
    check_model(mlp, (3, 8, 8), 10)
    assert mlp.training  # left in the mode it was in
