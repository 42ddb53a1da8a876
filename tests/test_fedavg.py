"""The FedAvg client and the attack's differentiable simulation of it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from conftest import CONFIGS, assert_same_update, cli_args, cli_error, run_dirs
from leakage.federated.client import client_gradients
from leakage.federated.fedavg import (FedAvgClient, batch_schedule, client_updates, epochs_to_steps,
                            per_problem_updates, schedules)


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(V=2, B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(V, B, 1, 28, 28, generator=g), torch.randint(0, 10, (V, B), generator=g)


def test_one_step_on_the_whole_batch_is_fedsgd(lenet_mnist):
    x, y = _batch()
    client = FedAvgClient(local_steps=1, local_lr=0.05, share="pseudo_gradient")
    assert client.is_fedsgd
    update = client_updates(lenet_mnist, x, y, client, keys=[1, 2])
    grads = client_gradients(lenet_mnist, x, y)
    assert_same_update(update, grads)
    # the weight difference is the same step, scaled by -lr
    delta = client_updates(lenet_mnist, x, y, FedAvgClient(local_steps=1, local_lr=0.05), keys=[1, 2])
    # w_1 - w_0 rounds at |w| ~ 0.5: float32 keeps about 6e-8 of |w|, 1.2e-6 of an lr-0.05 step of |g| ~ 1
    assert_same_update(delta, {n: -0.05 * g for n, g in grads.items()}, tolerance=1e-3)


@pytest.mark.parametrize("share", ["delta", "pseudo_gradient"])
def test_simulation_equals_the_client(lenet_mnist, share):
    x, y = _batch()
    client = FedAvgClient(local_steps=5, local_lr=0.1, local_batch_size=2, shuffle=True, shuffle_seed=3, share=share)
    keys = [11, 12]
    real = client_updates(lenet_mnist, x, y, client, keys)  # torch.optim.SGD and loss.backward()
    sim = per_problem_updates(lenet_mnist, x, y, client, schedules(client, 4, keys))  # pseudo-gradient units
    for n in real:
        assert real[n].abs().max() > 1e-5  # the steps moved every parameter
    # the simulation is in pseudo-gradient units; the weights round at |w| as above
    assert_same_update(sim, {n: client.gradient_estimate(u) for n, u in real.items()}, tolerance=1e-3)
    # five steps are not one: the update is not FedSGD's
    one = client_updates(lenet_mnist, x, y, FedAvgClient(local_steps=1, local_lr=0.1, share=share), keys)
    assert (one["fc.weight"] - real["fc.weight"]).abs().max() > 0.1 * real["fc.weight"].abs().max()


def test_simulation_is_differentiable_through_every_step(lenet_mnist):
    """The outer gradient through the unrolled torch.func steps equals autograd's own unroll with
    ``create_graph=True`` (the classic double-backward formulation)."""
    x, y = _batch(V=1)
    client = FedAvgClient(local_steps=3, local_lr=0.1, local_batch_size=2, shuffle_seed=1)
    sched = schedules(client, 4, [5])
    target = {n: torch.randn_like(p) * 1e-2 for n, p in lenet_mnist.named_parameters()}
    xa = x.clone().requires_grad_()
    sim = per_problem_updates(lenet_mnist, xa, y, client, sched)
    (ga,) = torch.autograd.grad(sum((sim[n][0] - t).pow(2).sum() for n, t in target.items()), xa)
    xb = x.clone().requires_grad_()
    w0 = {n: p.detach().clone().requires_grad_() for n, p in lenet_mnist.named_parameters()}
    w = dict(w0)
    for idx in sched[0]:
        loss = F.cross_entropy(functional_call(lenet_mnist, w, (xb[0][idx],)), y[0][idx])
        gs = torch.autograd.grad(loss, list(w.values()), create_graph=True)
        w = {n: v - 0.1 * g for (n, v), g in zip(w.items(), gs)}
    (gb,) = torch.autograd.grad(sum(((w[n] - w0[n]) / -0.1 - t).pow(2).sum() for n, t in target.items()), xb)
    assert gb.abs().max() > 0
    torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-6 * float(gb.abs().max()))


def test_mini_batch_order_is_public_and_seeded_per_update():
    client = FedAvgClient(local_steps=6, local_batch_size=2, shuffle=True, shuffle_seed=4)
    s = batch_schedule(client, 4, key=9)
    assert s.shape == (6, 2)
    for epoch in s.view(3, 4):  # every image once per epoch
        assert sorted(epoch.tolist()) == [0, 1, 2, 3]
    assert torch.equal(s, batch_schedule(client, 4, key=9))
    assert not torch.equal(s, batch_schedule(client, 4, key=10))
    fixed = FedAvgClient(local_steps=3, local_batch_size=2, shuffle=False)
    assert batch_schedule(fixed, 4, key=9).tolist() == [[0, 1], [2, 3], [0, 1]]
    assert epochs_to_steps(2, 4, 2) == 4 and epochs_to_steps(3, 4, None) == 3


def test_bad_client_settings_are_one_line():
    with pytest.raises(ValueError, match="local_steps must be an integer >= 1"):
        FedAvgClient(local_steps=0)
    with pytest.raises(ValueError, match="local_lr must be a finite number > 0"):
        FedAvgClient(local_lr=0.0)
    with pytest.raises(ValueError, match="local_batch_size 8 is larger than the client's batch of 4 images"):
        FedAvgClient(local_batch_size=8).mini_batch(4)
    with pytest.raises(ValueError, match="local_batch_size 3 does not divide the client's batch of 4"):
        FedAvgClient(local_batch_size=3).mini_batch(4)


@pytest.mark.parametrize("extra, expected", [
    (["--data.client", "FedAvg", "--data.client.local_steps", "0"], "local_steps must be an integer >= 1"),
    (["--data.client", "FedAvg", "--data.batch_size", "2", "--data.client.local_batch_size", "4"],
     "local_batch_size 4 is larger than the client's batch of 2 images"),
    (["--data.client.local_steps", "5"], "data.client: leakage.federated.client.FedSGD: no option 'local_steps'"),
    (["--data.client", "FedAvg", "--data.client.local_steps", "2", "--data.client.local_epochs", "2"],
     "set local_steps or local_epochs, not both"),
])
def test_cli_refuses_a_fedavg_client_that_does_not_fit(tmp_path, capsys, extra, expected):
    line = cli_error(capsys, cli_args(tmp_path, "--config", str(CONFIGS / "mnist_dlg.yaml"), *extra))
    assert expected in line, line
    assert run_dirs(tmp_path) == []


def test_secure_aggregate_of_fedavg_updates_is_refused(tmp_path, capsys):
    line = cli_error(capsys, cli_args(
        tmp_path, "--config", str(CONFIGS / "mnist_fedavg.yaml"), "--data.num_victims", "2", "--trainer.max_steps", "1",
        "--trainer.callbacks+=leakage.federated.defenses.SecureAggregation", "--trainer.callbacks.clients", "2"))
    assert "modelled for FedSGD updates only" in line, line


def test_preset_reconstructs_mnist_from_five_step_updates(tmp_path):
    from leakage.cli import main

    main(cli_args(tmp_path, "--config", str(CONFIGS / "mnist_fedavg.yaml"), "--data.indices", "[0,1]",
                  "--trainer.max_steps", "12"))
    (run,) = run_dirs(tmp_path)
    rows = json.loads((run / "metrics.json").read_text())["victims"]
    assert [r["ssim"] > 0.9 for r in rows] == [True, True], [r["ssim"] for r in rows]
    assert all(r["label_acc"] == 1.0 for r in rows)
    config = (run / "config.yaml").read_text()
    assert "class_path: leakage.federated.fedavg.FedAvg" in config and "local_steps: 5" in config


def test_simulation_equals_the_client_with_batchnorm_in_train_mode():
    """With BatchNorm, the client normalises every mini-batch with its own statistics (train mode);
    the simulation does the same per problem, and the model's running statistics stay untouched."""
    from leakage.federated.client import client_view

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10)).eval()
    running = model[1].running_mean.clone()
    x, y = _batch()
    client = FedAvgClient(local_steps=4, local_lr=0.05, local_batch_size=2, shuffle_seed=2)
    real = client_updates(model, x, y, client, [3, 4], mode="train")
    sim = per_problem_updates(model, x, y, client, schedules(client, 4, [3, 4]), forward=client_view(model, "train"))
    # the convolution's bias before BatchNorm gets no gradient (rounding only): assert_same_update's floor
    assert_same_update(sim, {n: client.gradient_estimate(u) for n, u in real.items()}, tolerance=1e-3)
    evaluated = client_updates(model, x, y, client, [3, 4], mode="eval")
    assert (evaluated["0.weight"] - real["0.weight"]).abs().max() > 1e-3  # the mode matters with BatchNorm
    assert torch.equal(model[1].running_mean, running)
