"""Target models: shapes, seeded weights, DLG's init and weight files."""

from __future__ import annotations

import pytest
import torch

from leakage.engine.models import build_model


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


@pytest.mark.parametrize("name, shape, pinned", [
    # the first two entries and the sum of each tensor, drawn from seed 1234 before LeNet and LeNetPrecode
    # shared one body (leakage.engine.lenet): the same module order draws the same weights
    ("lenet", (3, 32, 32), {"body.0.weight": (0.020912, -0.320242, 8.85308), "body.4.bias": (0.421164, -0.46469, -0.17057),
                            "fc.weight": (-0.280539, -0.00539, 2.21849)}),
    ("lenet", (1, 28, 28), {"body.0.weight": (-0.46392, 0.47905, 12.96009), "fc.weight": (-0.231579, -0.349882, -2.44936)}),
    ("lenet_precode", (1, 28, 28), {"body.0.weight": (-0.222606, -0.445447, 4.98268),
                                    "body.4.bias": (-0.469559, -0.084378, 0.83718),
                                    "bottleneck.encoder.weight": (0.030135, 0.035938, 7.14057),
                                    "fc.weight": (0.016796, 0.039732, -0.53219)}),
])
def test_a_seeded_lenet_draws_the_weights_it_always_drew(name, shape, pinned):
    state = build_model(name, shape, 10, seed=1234).state_dict()
    assert [k for k in state if k.startswith("body.")] == [f"body.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]
    for key, (first, second, total) in pinned.items():
        t = state[key].double()
        assert t.flatten()[:2].tolist() == pytest.approx([first, second], abs=1e-6), key
        assert float(t.sum()) == pytest.approx(total, abs=1e-4), key


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

    from leakage.engine.models import check_model

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


def _bad(tensor_kind, like):
    return {"int64": lambda: like.long(), "bool": lambda: like > 0, "nan": lambda: like.clone().fill_(float("nan")),
            "inf": lambda: like.clone().fill_(float("inf"))}[tensor_kind]()


BAD_WEIGHTS = {"int64": "is torch.int64, not floating point", "bool": "is torch.bool, not floating point",
               "nan": "holds NaN or infinite values", "inf": "holds NaN or infinite values"}


@pytest.mark.parametrize("kind", list(BAD_WEIGHTS))
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_files_that_are_not_float_or_not_finite_are_refused(tmp_path, kind, suffix):
    from leakage.federated.client import save_gradients  # a tensor-only writer of both formats

    state = build_model("lenet", (1, 28, 28), 10).state_dict()
    state["fc.weight"] = _bad(kind, state["fc.weight"])
    path = tmp_path / f"w{suffix}"
    save_gradients(state, path)
    with pytest.raises(ValueError, match=f"weights file {path}: 'fc.weight' {BAD_WEIGHTS[kind]}"):
        build_model("lenet", (1, 28, 28), 10, weights=str(path))


def test_integer_buffers_of_a_weights_file_are_kept(tmp_path):
    """BatchNorm's num_batches_tracked is an int64 buffer, not a weight: it loads as before."""
    from torch import nn

    from leakage.engine.models import load_weights

    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3))
    net.state_dict()["2.num_batches_tracked"].fill_(7)
    torch.save(net.state_dict(), tmp_path / "bn.pt")
    got = load_weights(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3)), tmp_path / "bn.pt")
    assert int(got.state_dict()["2.num_batches_tracked"]) == 7


@pytest.mark.parametrize("kind", list(BAD_WEIGHTS))
def test_a_user_module_whose_own_parameters_are_not_float_or_not_finite_is_refused(kind):
    import leakage
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    model[1].weight = nn.Parameter(_bad(kind, model[1].weight.detach()), requires_grad=kind in ("nan", "inf"))
    reason = f"model 'torch.nn.modules.container.Sequential': parameter '1.weight' {BAD_WEIGHTS[kind]}"
    with pytest.raises(ValueError, match=reason):
        build_model(model, (1, 4, 4), 3)
    with pytest.raises(ValueError, match=reason):  # the Python API, both calls
        leakage.client_update(model, torch.rand(1, 1, 4, 4), torch.tensor([0]))
    update = {"1.weight": torch.ones(3, 16), "1.bias": torch.ones(3)}  # not all zero, which invert refuses first
    with pytest.raises(ValueError, match=reason):
        leakage.invert(model, update, input_shape=(1, 4, 4), num_classes=3, steps=1)


def test_fit_refuses_a_weights_file_holding_nan_in_one_line(capsys, tmp_path):
    from conftest import cli_error

    state = build_model("lenet", (1, 28, 28), 10).state_dict()
    state["body.0.bias"] = _bad("nan", state["body.0.bias"])
    torch.save(state, tmp_path / "nan.pt")
    line = cli_error(capsys, ["fit", "--data.source.dataset", "mnist", "--trainer.max_steps", "1", "--trainer.logger", "false",
                              "--trainer.default_root_dir", str(tmp_path), "--model.model_weights", str(tmp_path / "nan.pt")])
    assert f"weights file {tmp_path / 'nan.pt'}: 'body.0.bias' holds NaN or infinite values" in line
