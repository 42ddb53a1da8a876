"""Attack your own model: any nn.Module from the Python API and the CLI, BatchNorm in train mode,
weights from checkpoints, and the one-line errors of a model or checkpoint that does not fit."""

from __future__ import annotations

import copy
import inspect
import csv
import pickle
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import leakage
from leakage.attacks.settings import Adam, Dummies, Objective
from leakage.attacks.gradient_inversion import GradientInversion
from leakage.federated.client import batchnorm_layers, client_gradients, client_view, per_problem_gradients
from leakage.data.datamodule import VictimDataModule
from leakage.records import Observation
from leakage.attacks.family import attack_class
from leakage.engine.models import build_model, load_weights
from leakage.presets import PRESETS
from leakage.fit import attack_arguments

from conftest import FLOAT32_UPDATE_TOLERANCE, assert_same_update, cli_error, relative_error
from leakage.data.sources import Bundled

ROOT = Path(__file__).resolve().parents[1]


class TinyNet(nn.Module):
    """A user's own model, defined here and nowhere in the package."""

    def __init__(self, width: int = 12, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 5, padding=2, stride=2), nn.Sigmoid(),
                                  nn.Conv2d(width, width, 5, padding=2, stride=2), nn.Sigmoid())
        self.fc = nn.Linear(width * 7 * 7, num_classes)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


class BNNet(nn.Module):
    """A small CNN with BatchNorm (2d and 1d) and dropout, as clients train them."""

    def __init__(self, channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Linear(32, num_classes))

    def forward(self, x):
        return self.head(self.body(x))


def _mnist(indices):
    secret = VictimDataModule(Bundled("mnist"), indices=list(indices), batch_size=len(indices)).load_victims()
    return secret.images[0], secret.labels[0]


def _with_running_stats(model: nn.Module, channels: int = 3) -> nn.Module:
    """Give the BatchNorm layers running statistics unlike the initial ones (a 'trained' model)."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, channels, 16, 16))
    return model.eval()


# ------------------------------------------------------------------ the Python API
def test_invert_reconstructs_an_image_through_a_users_own_module():
    torch.manual_seed(0)
    model = TinyNet()
    x, y = _mnist([0])
    update = leakage.client_update(model, x, y)
    assert set(update) == {n for n, _ in model.named_parameters()}
    assert all(update[n].shape == p.shape for n, p in model.named_parameters())
    result = leakage.invert(model, update, input_shape=(1, 28, 28), num_classes=10, attack="idlg", steps=30)
    assert result.images.shape == (1, 1, 1, 28, 28) and result.labels.tolist() == [y.tolist()]
    rep = leakage.report(result, x, y)
    assert rep.rows[0]["ssim"] >= 0.9 and rep.rows[0]["label_acc"] == 1.0
    assert "reconstructed (SSIM >= 0.9): 1/1" in str(rep)


def test_invert_with_dlg_joint_labels_and_restarts_keeps_the_best_restart():
    torch.manual_seed(0)
    model = TinyNet()
    x, y = _mnist([1])
    update = leakage.client_update(model, x, y)
    result = leakage.invert(model, update, input_shape=(1, 28, 28), num_classes=10, attack="dlg", restarts=2, steps=40)
    losses = result.module.final_evaluation()["loss"]
    assert float(result.matching_loss[0]) == pytest.approx(float(losses.min()))
    rep = leakage.report(result, x, y)
    assert rep.rows[0]["ssim"] >= 0.9 and rep.rows[0]["label_acc"] == 1.0


def test_invert_leaves_the_users_model_alone():
    torch.manual_seed(0)
    model = _with_running_stats(BNNet())
    state = copy.deepcopy(model.state_dict())
    x = torch.rand(2, 3, 16, 16)
    update = leakage.client_update(model, x, torch.tensor([1, 2]))
    leakage.invert(model, update, input_shape=(3, 16, 16), num_classes=10, attack="inverting_gradients", batch_size=2,
                   labels="bias_count", steps=3)
    assert not model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bad, message", [
    ({"attack": "dgl"}, "unknown attack 'dgl'; choose one of dlg, idlg, inverting_gradients, fast"),
    ({"distance": "l1"}, "unknown distance 'l1'"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"no_such_option": 1}, "unknown attack option"),
    ({"client_mode": "training"}, "unknown client_mode 'training'"),
    ({"input_shape": (1, 32, 32)}, "cannot take inputs of shape (1, 32, 32)"),
    ({"num_classes": 7}, "not [1, 7] logits"),
])
def test_invert_refuses_bad_settings_in_one_line(bad, message):
    model = TinyNet()
    update = leakage.client_update(model, *_mnist([0]))
    kwargs = {"input_shape": (1, 28, 28), "num_classes": 10, "steps": 1, **bad}
    with pytest.raises(ValueError) as err:
        leakage.invert(model, update, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_update_that_does_not_fit_the_model_is_one_line():
    update = leakage.client_update(TinyNet(width=12), *_mnist([0]))
    with pytest.raises(ValueError, match="does not fit the model|has shape"):
        leakage.invert(TinyNet(width=6), update, input_shape=(1, 28, 28), num_classes=10, steps=1)


def test_presets_are_the_preset_configs():
    for name, p in PRESETS.items():
        config = yaml.safe_load((ROOT / "configs" / f"{p.config}.yaml").read_text())
        model = config["model"]
        assert config.get("attack", "gradient_inversion") == p.attack, name
        arguments = attack_arguments(model, attack_class(p.attack))  # objects built as `leakage fit` builds them
        for key, value in p.settings.items():  # a key the config leaves out has the attack's default
            got = arguments[key]
            if key == "dummies":  # the restarts and their seed are the caller's (invert's restarts= and seed=)
                got = got.replace(restarts=value.restarts, init_seed=value.init_seed)
            assert got == value, (name, key, got, value)
        assert config["trainer"]["max_steps"] == p.steps, name


# --------------------------------------------------------- train mode and BatchNorm
@pytest.mark.parametrize("make", [lambda: _with_running_stats(BNNet()), TinyNet], ids=["batchnorm", "no-batchnorm"])
def test_train_mode_gradients_equal_a_plain_training_client(make):
    torch.manual_seed(1)
    model = make()
    shape = (3, 16, 16) if isinstance(model, BNNet) else (1, 28, 28)
    x = torch.rand(3, 4, *shape)
    y = torch.randint(0, 10, (3, 4))
    state = copy.deepcopy(model.state_dict())
    got = client_gradients(model, x, y, "train")
    for v in range(3):
        plain = copy.deepcopy(model)
        for m in plain.modules():  # the client's dropout is off (client_view says why)
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        plain.train()
        plain.zero_grad()
        F.cross_entropy(plain(x[v]), y[v]).backward()
        # float32 sums in another order: the same update to what float32 promises, norm-wise
        assert_same_update({k: g[v] for k, g in got.items()}, {n: p.grad for n, p in plain.named_parameters()})
    assert all(torch.equal(state[k], t) for k, t in model.state_dict().items())  # running statistics untouched
    if isinstance(model, BNNet):  # train mode really differs from eval mode here
        evaluated = client_gradients(model, x, y, "eval")
        assert not torch.allclose(evaluated["body.0.weight"], got["body.0.weight"], rtol=1e-3)


def test_each_problem_uses_its_own_batch_statistics():
    torch.manual_seed(2)
    model = _with_running_stats(BNNet())
    x = torch.rand(2, 3, 3, 16, 16)
    y = torch.randint(0, 10, (2, 3))
    both = client_gradients(model, x, y)
    reference = copy.deepcopy(model).double()
    mixed = client_gradients(model, x.reshape(1, 6, 3, 16, 16), y.reshape(1, 6))  # one batch of both victims
    for v in range(2):
        alone = per_problem_gradients(reference, x[v:v + 1].double(), y[v:v + 1],
                                      forward=client_view(reference, "train"))
        truth = {k: g[0].detach() for k, g in alone.items()}
        # each problem's update, computed beside another, is the float64 update of its own batch ...
        assert_same_update({k: g[v] for k, g in both.items()}, truth)
        # ... and the check can fail: statistics shared across the two batches give another update
        assert relative_error({k: g[0] for k, g in mixed.items()}, truth) > 100 * FLOAT32_UPDATE_TOLERANCE


def test_an_attack_on_a_batchnorm_model_leaves_its_running_statistics_unchanged(tmp_path):
    torch.manual_seed(3)
    model = _with_running_stats(BNNet(channels=1), channels=1)
    state = copy.deepcopy(model.state_dict())
    dm = VictimDataModule(Bundled("mnist", image_size=16), indices=[0, 1], batch_size=2)
    module = GradientInversion(model=model, input_shape=(1, 16, 16), labels="bias_count", objective=Objective(bn_weight=0.01), optimizer=Adam(lr=0.1))
    pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path).fit(module, datamodule=dm)
    assert all(torch.equal(state[k], t) for k, t in module.target.state_dict().items())
    assert torch.isfinite(module.problem_losses).all()


def test_dropout_is_off_in_the_client_so_its_update_is_reproducible():
    model = BNNet()
    x, y = torch.rand(1, 4, 3, 16, 16), torch.tensor([[0, 1, 2, 3]])
    a, b = client_gradients(model, x, y), client_gradients(model, x, y)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not m.training for m in client_view(model, "train").modules() if isinstance(m, nn.Dropout))


def test_bn_prior_is_the_distance_to_the_running_statistics():
    torch.manual_seed(4)
    model = _with_running_stats(BNNet())
    module = GradientInversion(model=model, input_shape=(3, 16, 16), objective=Objective(bn_weight=1.0))
    x = torch.rand(2, 3, 3, 16, 16)
    _, moments = per_problem_gradients(module.target, x, torch.zeros(2, 3, dtype=torch.long),
                                       forward=client_view(module.target, "train"), bn_layers=batchnorm_layers(model))
    layer = model.body[1]
    first = model.body[0](x[0])
    assert torch.allclose(moments["body.1"][0][0], first.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(moments["body.1"][1][0], first.var((0, 2, 3), unbiased=False), atol=1e-5)
    prior = module.bn_prior(moments)
    expected = sum((moments[n][0] - model.get_submodule(n).running_mean).norm(dim=-1)
                   + (moments[n][1] - model.get_submodule(n).running_var).norm(dim=-1) for n in moments)
    assert prior.shape == (2,) and torch.allclose(prior, expected)
    assert layer.running_mean is not None
    with pytest.raises(ValueError, match="bn_weight > 0 needs a model with BatchNorm layers"):
        GradientInversion(model=TinyNet(), input_shape=(1, 28, 28), objective=Objective(bn_weight=0.1))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_one_problem_at_a_time_gives_the_objective_and_its_exact_gradient_with_batchnorm(mode):
    """problems_per_chunk 1 evaluates each problem through torch.autograd.grad, not vmap(grad): in float64
    the same losses, a dummy gradient that matches a central finite difference, the running statistics
    untouched. (In train mode vmap(grad)'s own gradient is off by about 1.6e-5 relative there; in eval
    mode the two agree to 1e-15.)"""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        model = _with_running_stats(BNNet())
        x, y = torch.rand(2, 2, 3, 16, 16), torch.tensor([[1, 2], [3, 4]])
        update = client_gradients(model, x, y, mode)
        state = copy.deepcopy(model.state_dict())
        out = []
        for chunk in (None, 1):
            module = GradientInversion(model=copy.deepcopy(model), input_shape=(3, 16, 16), labels="known", objective=Objective(distance="cosine", problems_per_chunk=chunk), dummies=Dummies(restarts=2))
            module.attach(Observation(gradients=update, input_shape=(3, 16, 16), num_classes=10, batch_size=2,
                                      client_mode=mode, labels=y))
            losses = module.matching_loss()
            losses.sum().backward()
            out.append((losses.detach(), module.dummy_data.grad.clone()))
            assert all(torch.equal(state[k], t) for k, t in module.target.state_dict().items())
        torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-12, atol=0)
        d = torch.randn_like(out[1][1])
        base = module.dummy_data.detach().clone()
        with torch.no_grad():
            module.dummy_data.copy_(base + 1e-6 * d)
            plus = module.matching_loss().sum()
            module.dummy_data.copy_(base - 1e-6 * d)
            minus = module.matching_loss().sum()
        assert float((out[1][1] * d).sum()) == pytest.approx(float((plus - minus) / 2e-6), rel=1e-7)
        if mode == "eval":
            torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-10, atol=1e-12)
    finally:
        torch.set_default_dtype(default)


# ----------------------------------------------------------------------- built-ins
@pytest.mark.parametrize("name, shape", [("resnet18", (3, 32, 32)), ("resnet18_imagenet", (3, 64, 64)),
                                         ("resnet18", (1, 28, 28))])
def test_resnets_are_built_in(name, shape):
    model = build_model(name, shape, 10)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    if name == "resnet18":  # Inverting Gradients' CIFAR variant: 3x3 stride-1 stem, no max-pool
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert isinstance(model.maxpool, nn.Identity)
    assert len(batchnorm_layers(model)) == 20


# ------------------------------------------------------------------------- weights
def test_weights_from_a_lightning_checkpoint_with_its_prefix_stripped(tmp_path):
    class Wrapper(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = BNNet()

    src = Wrapper()
    _with_running_stats(src.model)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         default_root_dir=tmp_path)
    trainer.strategy.connect(src)
    path = tmp_path / "client.ckpt"
    trainer.save_checkpoint(path)
    got = load_weights(BNNet(), path)
    for k, v in src.model.state_dict().items():
        assert torch.equal(got.state_dict()[k], v)


def test_weights_from_safetensors_and_ambiguous_prefixes(tmp_path):
    from safetensors.torch import save_file

    src = _with_running_stats(BNNet())
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    got = load_weights(BNNet(), tmp_path / "w.safetensors")
    assert all(torch.equal(got.state_dict()[k], v) for k, v in src.state_dict().items())
    twice = {**{f"a.{k}": v for k, v in src.state_dict().items()}, **{f"b.{k}": v for k, v in src.state_dict().items()}}
    torch.save(twice, tmp_path / "twice.pt")
    with pytest.raises(ValueError, match="under several prefixes .'a.', 'b.'."):
        load_weights(BNNet(), tmp_path / "twice.pt")


class _Hostile:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_files_are_never_unpickled(tmp_path, capsys):
    path = tmp_path / "hostile.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"fc.weight": _Hostile()}}, f)
    with pytest.raises(ValueError, match="was refused: unpickling it could run code"):
        load_weights(TinyNet(), path)
    assert "this must never run" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- CLI
MY_MODELS = "from torch import nn\n\n\n" + inspect.getsource(TinyNet)  # the same module, in a user's own file



@pytest.fixture
def user_models(tmp_path, monkeypatch):
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "user_models.py").write_text(MY_MODELS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "user_models", raising=False)
    return folder


def _fit_rows(tmp_path, *args):
    from leakage.cli import main

    main(["fit", "--data.source.dataset", "mnist", "--data.indices", "[0]", "--model.labels", "idlg",
          "--trainer.max_steps", "30", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "out"),
          "--trainer.enable_progress_bar", "false", "--seed_everything", "0", *args])
    (run,) = (tmp_path / "out" / "leakage").glob("version_*")
    with open(run / "metrics.csv") as f:
        return run, list(csv.DictReader(f))


def test_fit_attacks_a_module_given_by_import_path_on_the_command_line(tmp_path, user_models):
    run, rows = _fit_rows(tmp_path, "--model.model", "user_models.TinyNet", "--model.model.width", "10")
    assert float(rows[0]["ssim"]) >= 0.9 and rows[0]["recovered_labels"] == rows[0]["true_labels"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["model"] == {"class_path": "user_models.TinyNet", "init_args": {"width": 10, "num_classes": 10}}


def test_fit_attacks_a_module_given_by_class_path_in_a_config(tmp_path, user_models):
    config = tmp_path / "own.yaml"
    config.write_text(yaml.safe_dump({"model": {"model": {"class_path": "user_models.TinyNet", "init_args": {"width": 8}}},
                                      "data": {"client": {"class_path": "leakage.federated.client.FedSGD",
                                                          "init_args": {"client_mode": "train"}}}}))
    _, rows = _fit_rows(tmp_path, "--config", str(config))
    assert float(rows[0]["ssim"]) >= 0.9


def test_fit_errors_for_a_model_that_does_not_fit(capsys, tmp_path, user_models):
    base = ["fit", "--data.source.dataset", "mnist", "--trainer.max_steps", "1", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path)]
    line = cli_error(capsys, base + ["--model.model", "nosuch_package.Net"])
    assert "'nosuch_package.Net' is not a built-in" in line and "importable" in line
    line = cli_error(capsys, base + ["--model.model", "user_models.TinyNet", "--model.model.num_classes", "7"])
    assert "gives (1, 7) for one input of shape (1, 28, 28), not [1, 10] logits" in line
    line = cli_error(capsys, base + ["--data.source.dataset", "cifar10", "--model.model", "user_models.TinyNet"])
    assert "cannot take inputs of shape (3, 32, 32)" in line
    torch.save(TinyNet(width=6).state_dict(), tmp_path / "other.pt")
    line = cli_error(capsys, base + ["--model.model", "user_models.TinyNet", "--model.model_weights",
                                     str(tmp_path / "other.pt")])
    assert "does not fit model 'user_models.TinyNet'" in line
    line = cli_error(capsys, base + ["--data.client.client_mode", "training"])
    assert "client_mode" in line
    assert not list(tmp_path.glob("**/metrics.csv"))


def test_the_resnet18_preset_runs_offline_with_batchnorm_in_train_mode(tmp_path):
    from leakage.cli import main

    config = yaml.safe_load((ROOT / "configs" / "cifar_resnet18.yaml").read_text())
    assert config["data"]["client"]["init_args"]["client_mode"] == "train" and config["model"]["model"] == "resnet18"
    main(["fit", "--config", str(ROOT / "configs" / "cifar_resnet18.yaml"), "--trainer.max_steps", "2",
          "--data.num_victims", "1", "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false"])
    (run,) = tmp_path.glob("cifar_resnet18/version_*")
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["recovered_labels"] == rows[0]["true_labels"]


def test_the_api_attacks_a_fedavg_update_of_several_local_steps_whichever_the_client_shares():
    """A user model at PyTorch's default init: the weight difference ``w_K - w_0`` is attacked in
    pseudo-gradient units (the attacker knows local_lr), so ``delta`` reconstructs as the
    ``pseudo_gradient`` does (before, its l2 loss was local_lr**2 smaller and stalled: SSIM -0.004)."""
    torch.manual_seed(0)
    model = TinyNet()
    x, y = _mnist([2])
    ssim = {}
    for share in ("delta", "pseudo_gradient"):
        client = leakage.FedAvgClient(local_steps=3, local_lr=0.1, share=share)
        update = leakage.client_update(model, x, y, fedavg=client)
        assert not torch.allclose(update["fc.weight"], leakage.client_update(model, x, y)["fc.weight"])
        result = leakage.invert(model, update, input_shape=(1, 28, 28), num_classes=10, attack="idlg", steps=10,
                                fedavg=client)
        rep = leakage.report(result, x, y)
        assert rep.rows[0]["label_acc"] == 1.0
        ssim[share] = rep.rows[0]["ssim"]
    assert min(ssim.values()) >= 0.9, ssim
    assert abs(ssim["delta"] - ssim["pseudo_gradient"]) <= 1e-3, ssim
    with pytest.raises(ValueError, match="local_batch_size 2 is larger than the client's batch of 1"):
        leakage.client_update(model, x, y, fedavg=leakage.FedAvgClient(local_batch_size=2))
