"""The memory estimate made before the problems are allocated: its parts are what the attack and its
optimizers really allocate, and an attack that does not fit is refused in one line, before the run."""

from __future__ import annotations

import pytest
import torch

import leakage.engine.memory
from leakage.attacks.settings import Adam, Dummies
from leakage.attacks.gradient_inversion import GradientInversion
from leakage.data.datamodule import VictimDataModule
from leakage.engine.memory import MiB, estimate, lbfgs_state_bytes
from leakage.engine.optim import BatchedLBFGS

from conftest import cli_args, cli_error, run_dirs
from leakage.data.sources import Bundled


def _state_bytes(opt) -> int:
    return sum(t.nbytes for state in opt.state.values() for t in state.values() if torch.is_tensor(t))


@pytest.mark.parametrize("history", [1, 7])
def test_lbfgs_term_is_what_the_optimizer_allocates(history):
    P, shapes = 3, [(3, 2, 5), (3, 4)]  # D = 14 per problem
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    opt = BatchedLBFGS(params, max_iter=2, history_size=history)

    def closure():
        opt.zero_grad()
        losses = sum(p.pow(2).flatten(1).sum(1) for p in params)
        losses.sum().backward()
        return losses.detach()

    opt.step(closure)
    assert _state_bytes(opt) == lbfgs_state_bytes(P, 14, history)


def test_dummies_observed_and_adam_terms_are_what_the_attack_allocates():
    dm = VictimDataModule(Bundled("mnist"), num_victims=2)
    module = GradientInversion(model="mlp", input_shape=(1, 28, 28), optimizer=Adam(), dummies=Dummies(restarts=3))
    module.attach(dm.prepare(module.target))
    parts = estimate(module.target, victims=2, restarts=3, batch_size=1, input_shape=(1, 28, 28), num_classes=10,
                     joint_labels=True, optimizer="adam", history_size=100)
    observed = sum(o.nbytes for o in module.observed())
    dummies = module.dummy_data.nbytes + module.dummy_labels.nbytes
    assert parts["observed"] == observed
    assert parts["dummies"] == 2 * dummies  # the values and their gradients
    opt = module.configure_optimizers()
    for p in (module.dummy_data, module.dummy_labels):
        p.grad = torch.ones_like(p)
    opt.step()
    adam = sum(t.nbytes for s in opt.state.values() for k, t in s.items() if k != "step")
    assert parts["optimizer"] == adam


def test_estimate_agrees_with_the_measured_cost_per_problem():
    # docs/benchmarks.md, "Many problems at once": about 3 MiB per problem (3.02 to 3.32 MiB per added problem, peak
    # RSS) for DLG's settings on CIFAR-10 LeNet at history 100; the estimate must agree within 2x
    from leakage.engine.models import build_model

    model = build_model("lenet", (3, 32, 32), 10)
    parts = estimate(model, victims=20, restarts=50, batch_size=1, input_shape=(3, 32, 32), num_classes=10,
                     joint_labels=True, optimizer="lbfgs", history_size=100)
    per_problem = sum(parts.values()) / 1000 / MiB
    assert 3.0 / 2 <= per_problem <= 3.3 * 2, per_problem


@pytest.mark.parametrize(
    "args, advice",
    [
        (["--data.num_victims", "100000000"], "lower --model.optimizer.history_size, --data.num_victims or --model.dummies.restarts"),
        (["--model.dummies.restarts", "1000000000"], "lower --model.optimizer.history_size, --data.num_victims or --model.dummies.restarts"),
        (["--model.dummies.restarts", "10000000", "--model.optimizer", "Adam", "--model.objective.problems_per_chunk", "10"],
         "lower --data.num_victims or --model.dummies.restarts"),
    ],
)
def test_attack_larger_than_the_machine_is_refused_before_the_run(capsys, tmp_path, args, advice):
    line = cli_error(capsys, cli_args(tmp_path / "logs", "--trainer.max_steps", "1", *args))
    assert line.startswith("leakage: error: the attack needs about ")
    assert "GiB this machine has free: " + advice in line
    assert run_dirs(tmp_path / "logs") == []


def test_refusal_names_the_number(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(leakage.engine.memory, "host_available", lambda: 4 * MiB)  # a machine with 4 MiB free
    line = cli_error(capsys, cli_args(tmp_path / "logs", "--data.source.dataset", "mnist", "--data.num_victims", "2",
                                      "--model.dummies.restarts", "2", "--trainer.max_steps", "1"))
    # LeNet on MNIST, history 100: 0.75 MiB per problem, most of it the L-BFGS history
    assert line.startswith("leakage: error: the attack needs about 4.1 MiB for 4 problems (2 victims x 2 restarts, "
                           "0.75 MiB each; most of it the optimizer), ")
    assert line.endswith("more than the 4.0 MiB this machine has free: "
                         "lower --model.optimizer.history_size, --data.num_victims or --model.dummies.restarts")
    assert run_dirs(tmp_path / "logs") == []
