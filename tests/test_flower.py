"""The Flower integration: a real Flower server loop and NumPyClient, captured and attacked."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import REPO, assert_same_update, cli_args, cli_error, run_dirs
from leakage.data.sources import Bundled

flwr = pytest.importorskip("flwr")  # installed by the test extra


pytestmark = pytest.mark.usefixtures("one_thread")


def _images(indices):
    from leakage.data.datamodule import VictimDataModule

    secret = VictimDataModule(Bundled("mnist"), indices=list(indices), batch_size=1).load_victims()
    return secret.images[:, 0], secret.labels[:, 0]


def _federation(tmp_path, rounds=2, steps=3):
    from flwr.server.strategy import FedAvg

    from leakage.integrations.flower import CaptureStrategy, TorchFedAvgClient, initial_parameters, run_in_process
    from leakage.engine.models import build_model

    x, y = _images([0, 1])
    clients = {f"c{i}": TorchFedAvgClient(build_model("lenet", (1, 28, 28), 10, seed=99), x[i:i + 1], y[i:i + 1])
               for i in range(2)}
    server_model = build_model("lenet", (1, 28, 28), 10, seed=1234)
    config = {"local_steps": steps, "local_lr": 0.1, "local_batch_size": 1, "shuffle": True, "shuffle_seed": 7}
    inner = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2, min_available_clients=2,
                   initial_parameters=initial_parameters(server_model), on_fit_config_fn=lambda r: dict(config))
    strategy = CaptureStrategy(inner, server_model, tmp_path / "capture")
    history = run_in_process(strategy, clients, num_rounds=rounds)
    return strategy, history, x, y, config


def test_capture_holds_the_real_clients_update(tmp_path):
    from leakage.federated.capture import read_capture
    from leakage.federated.fedavg import FedAvgClient, fedavg_update
    from leakage.integrations.flower import update_key
    from leakage.engine.models import build_model

    strategy, _, x, y, config = _federation(tmp_path)
    names = sorted(p.relative_to(tmp_path / "capture").as_posix() for p in strategy.saved)
    assert names == ["round_001/client_c0.safetensors", "round_001/client_c1.safetensors",
                     "round_002/client_c0.safetensors", "round_002/client_c1.safetensors"]
    update, weights, meta = read_capture(tmp_path / "capture" / "round_002" / "client_c1.safetensors")
    assert meta["num_examples"] == 1 and meta["local_steps"] == 3 and meta["share"] == "delta"
    assert meta["update_key"] == update_key(2, "c1")
    # round 2 starts from the aggregate of round 1, not from the initial weights
    init = build_model("lenet", (1, 28, 28), 10, seed=1234)
    assert (weights["fc.weight"] - init.fc.weight).abs().max() > 1e-3
    # the captured update is what the client computes from those weights (leakage's own FedAvg client)
    model = build_model("lenet", (1, 28, 28), 10)
    model.load_state_dict(weights)
    client = FedAvgClient(local_steps=3, local_lr=0.1, local_batch_size=1, shuffle=True, shuffle_seed=7)
    expected = fedavg_update(model, x[1:2], y[1:2], client, update_key(2, "c1"))
    assert set(update) == set(expected)
    assert_same_update(update, expected, tolerance=1e-3)  # a weight difference: it rounds at |w|


def _fit(args):
    """``leakage fit`` in-process, as :func:`leakage.cli.main` runs it; returns the LightningCLI."""
    from leakage.attacks.gradient_inversion import GradientInversion
    from leakage.data.datamodule import VictimDataModule
    from leakage.fit import TRAINER_DEFAULTS, LeakageCLI

    return LeakageCLI(GradientInversion, VictimDataModule, trainer_defaults=TRAINER_DEFAULTS,
                      save_config_kwargs={"overwrite": True}, args=args)


def _attack_args(tmp_path, capture, *extra):
    return cli_args(tmp_path / "logs", "--config", str(REPO / "configs" / "mnist_dlg.yaml"),
                    "--data.source", "CapturedGradients", "--data.source.gradient_file", str(capture), "--data.source.dataset", "mnist",
                    "--data.num_victims", "1",  # the preset's 20 images: a capture holds one update
                    "--data.client", "FedAvg", "--data.client.local_steps", "3", "--data.client.local_lr", "0.1",
                    "--data.client.local_batch_size", "1", "--data.client.shuffle_seed", "7", "--model.labels", "idlg", *extra)


def test_cli_reconstructs_the_flower_clients_image(tmp_path):
    from leakage.federated.capture import read_capture
    from leakage.engine.metrics import ssim_per_image
    from leakage.engine.models import build_model

    _, _, x, y, _ = _federation(tmp_path, rounds=1)
    capture = tmp_path / "capture" / "round_001" / "client_c1.safetensors"
    # the attack's own model seed differs: only the capture's global weights make the target right
    cli = _fit(_attack_args(tmp_path, capture, "--model.model_seed", "5", "--trainer.max_steps", "10"))
    _, weights, _ = read_capture(capture)
    assert (build_model("lenet", (1, 28, 28), 10, seed=5).fc.weight - weights["fc.weight"]).abs().max() > 0.1
    torch.testing.assert_close(cli.model.target.fc.weight, weights["fc.weight"], rtol=0, atol=0)
    recon = cli.model.dummy_data.detach()[0].clamp(0, 1)
    assert cli.model.recovered_labels()[0].tolist() == y[1:2].tolist()
    assert ssim_per_image(recon, x[1:2]).item() > 0.9
    assert len(run_dirs(tmp_path / "logs")) == 1


def test_capture_that_does_not_fit_is_one_line(tmp_path, capsys):
    from leakage.federated.capture import read_capture, save_capture

    _federation(tmp_path, rounds=1, steps=1)
    capture = tmp_path / "capture" / "round_001" / "client_c0.safetensors"
    # the attack's client settings must be the ones the server sent
    line = cli_error(capsys, _attack_args(tmp_path, capture, "--trainer.max_steps", "1"))
    assert "--data.client.local_steps 1" in line, line
    # a capture of another model: the global weights do not fit LeNet's state_dict
    update, weights, meta = read_capture(capture)
    weights["fc.weight"] = weights["fc.weight"][:, :10]
    bad = tmp_path / "bad.safetensors"
    save_capture(bad, update, weights, 1, update_key=meta["update_key"],
                 settings={k: meta[k] for k in ("local_steps", "local_lr", "local_batch_size", "shuffle", "shuffle_seed")})
    line = cli_error(capsys, _attack_args(tmp_path, bad, "--data.client.local_steps", "1", "--trainer.max_steps", "1"))
    assert "update 'fc.weight' has shape (10, 588), its global weight (10, 10)" in line, line
    # the batch size must be the client's num_examples
    line = cli_error(capsys, _attack_args(tmp_path, capture, "--data.client.local_steps", "1", "--data.batch_size", "2",
                                          "--data.client.local_batch_size", "2", "--trainer.max_steps", "1"))
    assert "trained on 1 examples: set --data.batch_size 1" in line, line
    assert run_dirs(tmp_path / "logs") == []


def test_flower_arrays_that_do_not_fit_the_model_are_one_line():
    import numpy as np

    from leakage.integrations.flower import ndarrays_to_state, state_to_ndarrays
    from leakage.engine.models import build_model

    model = build_model("lenet", (1, 28, 28), 10)
    arrays = state_to_ndarrays(model)
    state = ndarrays_to_state(model, arrays)
    assert list(state) == list(model.state_dict())  # Flower's order is the state_dict's
    with pytest.raises(ValueError, match=r"7 arrays, the model's state_dict has 8 entries"):
        ndarrays_to_state(model, arrays[:-1])
    with pytest.raises(ValueError, match=r"array 6 has shape \(10, 5\), state_dict entry 'fc.weight' needs \(10, 588\)"):
        ndarrays_to_state(model, arrays[:6] + [np.zeros((10, 5), np.float32)] + arrays[7:])


def test_core_never_imports_flwr():
    code = ("import sys, leakage, leakage.fit, leakage.cli, leakage.data.datamodule, leakage.attacks.gradient_inversion, leakage.federated.fedavg, "
            "leakage.federated.capture, leakage.integrations, leakage.sweep; "
            "assert 'flwr' not in sys.modules, 'flwr imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
