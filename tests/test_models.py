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
