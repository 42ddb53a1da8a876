"""A malicious server (leakage.federated.server) and its closed-form attacks (leakage.attacks.malicious): the imprint
module reads most of a batch of 64 MNIST images exactly, trap weights some, the threat model heads
every report, and settings the model cannot take are refused in one line."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import leakage
from leakage.data.datamodule import VictimDataModule
from leakage.attacks.imprint import ImprintAttack
from leakage.attacks.trap_weights import TrapWeightAttack
from leakage.engine.metrics import reconstruction_metrics
from leakage.engine.models import build_model
from leakage.federated.server import ImprintServer, Imprinted

from conftest import fit_in_process, cli_args, cli_error, run_dirs
from leakage.federated.fedavg import FedAvg
from leakage.data.sources import Bundled

SHAPE = (1, 28, 28)



def _exact_images(recon: torch.Tensor, truth: torch.Tensor) -> int:
    """Images of ``truth`` ``[B, ...]`` that some slot of ``recon`` holds to float32 rounding (1e-3 relative;
    a bin of two images is off by more than 1e-2)."""
    distance = torch.cdist(truth.flatten(1), recon.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    return int((distance.min(dim=1).values <= 1e-3 * truth.flatten(1).norm(dim=1)).sum())


def test_the_imprint_module_reads_most_of_a_batch_of_64_mnist_images_exactly(tmp_path):
    """configs/mnist_imprint.yaml: 64 images, 256 bins in front of LeNet; the client trained the changed
    model, the attack targets it, and every report says so in its first line."""
    cli = fit_in_process(tmp_path, "mnist_imprint.yaml")
    obs = cli.datamodule.observation
    assert isinstance(cli.model, ImprintAttack) and isinstance(cli.model.target, Imprinted)
    assert "imprint.measure.weight" in obs.gradients and obs.gradients["imprint.measure.weight"].shape == (1, 256, 784)
    secret = cli.datamodule.secret
    ssim = reconstruction_metrics(cli.model.dummy_data.detach().cpu(), secret.images)["ssim_images"]
    exact = _exact_images(cli.model.dummy_data[0].cpu(), secret.images[0])
    assert int((ssim >= 0.99).sum()) >= 56 and exact >= 56  # measured: 58 of 64
    run, = run_dirs(tmp_path)
    first = "threat model: malicious server: imprint module with 256 bins"
    assert (run / "metrics.txt").read_text().startswith(first) and f"\n\n{first}" in cli.stdout  # the printed table
    body = (run / "report.html").read_text().split("<body>", 1)[1].lstrip()
    assert body.startswith('<p class="threat-line"><b>Threat model: malicious server: imprint module with 256 bins')
    acc = EventAccumulator(str(next(run.glob("events.out.tfevents.*"))), size_guidance={"tensors": 0})
    acc.Reload()
    card = acc.Tensors("summary/text_summary")[-1].tensor_proto.string_val[0].decode()  # the summary card
    assert card.startswith("**Threat model: malicious server: imprint module with 256 bins")


def test_trap_weights_recover_images_exactly_through_the_python_api():
    server = leakage.TrapWeightServer(trap_scale=0.7)
    sent = server.send(build_model("mlp", SHAPE, 10, seed=1234), SHAPE)  # the model the client trains
    x, y = leakage.bundled_images("mnist", range(16))
    update = leakage.client_update(sent, x, y)
    result = leakage.invert(sent, update, input_shape=SHAPE, num_classes=10, batch_size=16, attack="trap_weights",
                            server=server)
    assert isinstance(result.module, TrapWeightAttack) and result.labels.shape == (1, 16)
    assert _exact_images(result.images[0], x) >= 10  # measured: 14 of 16
    with pytest.raises(ValueError, match="pass that model as model="):
        leakage.invert(build_model("mlp", SHAPE, 10, seed=1234), update, input_shape=SHAPE, num_classes=10,
                       batch_size=16, attack="trap_weights", server=server)


def test_the_imprint_attack_reads_a_fedavg_update():
    """One local epoch of 4 SGD steps on mini-batches of 4: every unit still passes the same gradient; the
    bins move a little over the steps, so the images come back to SSIM 0.99, not to float32 rounding."""
    dm = VictimDataModule(Bundled("mnist"), client=FedAvg(local_epochs=1, local_batch_size=4), server=ImprintServer(num_bins=256), batch_size=16)
    attack = ImprintAttack(model="lenet")
    observation = dm.prepare(attack.target)
    attack.attach(observation)
    x, _, exact = attack.solve(observation)
    ssim = reconstruction_metrics(x, dm.secret.images)["ssim_images"]
    assert int((ssim >= 0.99).sum()) >= 14 and not exact.any()  # measured: 16 of 16 (to 1e-3 relative: 12)


def test_settings_a_malicious_server_cannot_take_are_one_line_errors(capsys, tmp_path):
    line = cli_error(capsys, cli_args(tmp_path, "--attack", "trap_weights", "--model.model", "lenet",
                                      "--data.source.dataset", "mnist", "--data.server", "TrapWeightServer"))
    assert "planting trap weights needs a fully connected first layer" in line and "(Conv2d)" in line
    line = cli_error(capsys, cli_args(tmp_path, "--data.server.num_bins", "64"))
    assert line == "leakage: error: data.server: leakage.federated.server.Server: no option 'num_bins'"
    line = cli_error(capsys, cli_args(tmp_path, "--data.server", "TrapWeightServer", "--data.server.num_bins", "64"))
    assert line == "leakage: error: data.server: leakage.TrapWeightServer: no option 'num_bins'"
    line = cli_error(capsys, cli_args(tmp_path, "--attack", "imprint", "--data.source.dataset", "mnist"))
    assert "the imprint attack reads what a malicious server planted: run it with --data.server ImprintServer" in line
    with pytest.raises(ValueError, match="the imprint module takes 2 to 4096 bins, got num_bins 5000"):
        ImprintServer(5000)
    with pytest.raises(ValueError, match=r"no room for an imprint module of 4096 bins on inputs of shape \(3, 96, 96\)"):
        ImprintServer(4096).send(build_model("mlp", (3, 96, 96), 10), (3, 96, 96))
