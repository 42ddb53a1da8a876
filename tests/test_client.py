"""The client's shared gradients, and saving / loading / validating captured gradients."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from leakage.federated.client import client_gradients, load_gradients, per_problem_gradients, save_gradients, validate_gradients
from leakage.engine.models import build_model

from conftest import assert_same_update


def reference_gradients(model, x, y):
    """What a client computes: ``cross_entropy(model(x_v), y_v).backward()``, victim by victim."""
    out = {n: [] for n, _ in model.named_parameters()}
    for v in range(x.shape[0]):
        model.zero_grad()
        F.cross_entropy(model(x[v]), y[v]).backward()
        for n, p in model.named_parameters():
            out[n].append(p.grad.detach().clone())
    model.zero_grad()
    return {n: torch.stack(g) for n, g in out.items()}


@pytest.mark.parametrize("batch_size", [1, 2])
def test_client_gradients_equal_plain_backward(batch_size):
    model = build_model("lenet", (3, 32, 32), 10)
    gen = torch.Generator().manual_seed(0)
    V = 3
    x = torch.rand(V, batch_size, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (V, batch_size), generator=gen)
    got = client_gradients(model, x, y)
    ref = reference_gradients(model, x, y)
    assert list(got) == [n for n, _ in model.named_parameters()]
    for name, g in got.items():
        assert g.shape == (V, *dict(model.named_parameters())[name].shape)
        assert not g.requires_grad
    assert_same_update(got, ref)  # vmap against a plain backward: what float32 promises, norm-wise
    # the victims' updates differ (the per-victim split is real)
    assert not torch.allclose(got["fc.bias"][0], got["fc.bias"][1])


def test_soft_label_gradients_keep_the_graph():
    """DLG's soft labels: gradients w.r.t. a probability target, differentiable w.r.t. the input."""
    model = build_model("mlp", (1, 8, 8), 4)
    x = torch.rand(2, 1, 1, 8, 8, requires_grad=True)
    soft = torch.softmax(torch.randn(2, 1, 4), -1)
    grads = per_problem_gradients(model, x, soft)
    assert grads["net.3.bias"].requires_grad
    # with a one-hot target the soft-label gradient equals the hard-label one
    hard = torch.tensor([[1], [3]])
    g_soft = per_problem_gradients(model, x.detach(), F.one_hot(hard, 4).float())
    g_hard = client_gradients(model, x.detach(), hard)
    for n in g_hard:
        torch.testing.assert_close(g_soft[n], g_hard[n])
    # and the outer backward reaches the input
    sum(g.pow(2).sum() for g in grads.values()).backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_load_roundtrip(tmp_path, suffix, lenet_mnist):
    x = torch.rand(2, 1, 1, 28, 28)
    y = torch.tensor([[3], [7]])
    grads = client_gradients(lenet_mnist, x, y)
    path = tmp_path / f"grads{suffix}"
    save_gradients(grads, path)
    loaded = load_gradients(path, lenet_mnist)
    assert list(loaded) == list(grads)
    for n in grads:
        assert torch.equal(loaded[n], grads[n])


def test_single_update_without_victim_dimension(tmp_path, lenet_mnist):
    grads = client_gradients(lenet_mnist, torch.rand(1, 1, 1, 28, 28), torch.tensor([[4]]))
    single = {n: g[0] for n, g in grads.items()}  # shaped like the parameters
    out = validate_gradients(single, lenet_mnist)
    for n in grads:
        assert out[n].shape == grads[n].shape
        assert torch.equal(out[n], grads[n])


def test_double_gradients_are_converted_to_float32(lenet_mnist):
    grads = {n: torch.zeros(2, *p.shape, dtype=torch.float64) for n, p in lenet_mnist.named_parameters()}
    out = validate_gradients(grads, lenet_mnist)
    assert all(g.dtype == torch.float32 and g.shape[0] == 2 for g in out.values())


# ------------------------------------------------------------------------- bad gradient files
def _good(model, V=2):
    return {n: torch.randn(V, *p.shape) for n, p in model.named_parameters()}


def test_wrong_shape(tmp_path, lenet_mnist):
    grads = _good(lenet_mnist)
    grads["fc.weight"] = torch.randn(2, 10, 99)
    path = tmp_path / "g.safetensors"
    save_gradients(grads, path)
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(2, 10, 99\), the model needs \(10, 588\)"):
        load_gradients(path, lenet_mnist)


def test_missing_and_unexpected_keys(tmp_path, lenet_mnist):
    grads = _good(lenet_mnist)
    del grads["fc.bias"]
    grads["head.extra"] = torch.zeros(3)
    path = tmp_path / "g.safetensors"
    save_gradients(grads, path)
    with pytest.raises(ValueError, match=r"missing \['fc.bias'\], unexpected \['head.extra'\]"):
        load_gradients(path, lenet_mnist)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values(tmp_path, lenet_mnist, bad):
    grads = _good(lenet_mnist)
    grads["body.0.weight"][1, 0, 0, 0, 0] = bad
    path = tmp_path / "g.pt"
    save_gradients(grads, path)
    with pytest.raises(ValueError, match="'body.0.weight' holds NaN or infinite values"):
        load_gradients(path, lenet_mnist)


def test_disagreeing_victim_counts(lenet_mnist):
    grads = _good(lenet_mnist)
    grads["fc.bias"] = torch.randn(3, 10)
    with pytest.raises(ValueError, match=r"disagree on the number of updates: \[2, 3\]"):
        validate_gradients(grads, lenet_mnist)


def test_integer_entries_rejected(lenet_mnist):
    grads = _good(lenet_mnist)
    grads["fc.bias"] = torch.zeros(2, 10, dtype=torch.long)
    with pytest.raises(ValueError, match="'fc.bias' is not a floating-point tensor"):
        validate_gradients(grads, lenet_mnist)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_garbage_bytes(tmp_path, lenet_mnist, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(os.urandom(64) + b"\x00garbage")
    with pytest.raises(ValueError) as exc:
        load_gradients(path, lenet_mnist)
    msg = str(exc.value)
    assert msg.startswith(f"cannot read gradient file {path}")
    assert "\n" not in msg


def test_truncated_safetensors(tmp_path, lenet_mnist):
    path = tmp_path / "g.safetensors"
    save_gradients(_good(lenet_mnist), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read gradient file"):
        load_gradients(path, lenet_mnist)


def test_pt_file_with_non_mapping(tmp_path, lenet_mnist):
    path = tmp_path / "g.pt"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ValueError, match="must hold a mapping of parameter name to tensor, got list"):
        load_gradients(path, lenet_mnist)


def test_missing_file(tmp_path, lenet_mnist):
    with pytest.raises(FileNotFoundError, match="gradient file not found"):
        load_gradients(tmp_path / "nope.safetensors", lenet_mnist)


class _Hostile:
    """Unpickling this object would create ``marker`` (stands in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_hostile_pickle_is_refused_without_running_code(tmp_path, lenet_mnist, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "grads.pt"
    if how == "pickle":
        with open(path, "wb") as f:
            pickle.dump(_Hostile(marker), f)
    else:
        torch.save({"fc.bias": _Hostile(marker)}, path)
    # sanity: a plain unpickler really would run the payload
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Hostile(probe)))
    assert probe.exists()

    with pytest.raises(ValueError) as exc:
        load_gradients(path, lenet_mnist)
    assert str(exc.value).startswith(f"gradient file {path} was refused: unpickling it could run code")
    assert "\n" not in str(exc.value)
    assert not marker.exists()


def test_hostile_model_weights_do_not_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pt"
    torch.save({"fc.weight": _Hostile(marker)}, path)
    with pytest.raises(Exception):
        build_model("lenet", (1, 28, 28), 10, weights=str(path))
    assert not marker.exists()
