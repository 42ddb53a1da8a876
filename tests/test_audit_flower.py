"""The Flower audit mod (leakage.integrations.flower_audit) on a real ClientApp running leakage's NumPyClient
in process: a malicious round is stopped before the client trains, an honest one trains, and the settings
``raise`` and ``warn`` do what they say."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leakage.api import bundled_images
from leakage.engine.models import build_model
from leakage.federated.server import TrapWeightServer

flwr = pytest.importorskip("flwr")  # installed by the test extra

MNIST = (1, 28, 28)


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower's runtime names the task a message belongs to before a ClientApp handles it; so does this test."""
    from flwr.supercore.task_identity import TaskIdentity

    before = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before


def _round(sent_model, on_fail="stop", batch=None):
    """One train message carrying ``sent_model``'s parameters, handled by a ClientApp with the audit mod;
    returns the reply, the client's own model afterwards, and the mod."""
    from flwr.app import Context, Message, MessageType, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.common import FitIns
    from flwr.compat.common import recorddict_compat as compat

    from leakage.integrations.flower import TorchFedAvgClient, initial_parameters
    from leakage.integrations.flower_audit import audit_mod

    x, y = bundled_images("mnist", list(range(16)))
    client = TorchFedAvgClient(build_model("mlp", MNIST, 10, seed=3), x, y)
    mod = audit_mod(build_model("mlp", MNIST, 10), batch=batch, on_fail=on_fail)
    app = ClientApp(client_fn=lambda context: client.to_client(), mods=[mod])
    content = compat.fitins_to_recorddict(FitIns(initial_parameters(sent_model), {"local_steps": 1}), keep_input=True)
    message = Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    return app(message, context), client.model, mod


def _returned(reply) -> list[np.ndarray]:
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    return parameters_to_ndarrays(compat.recorddict_to_fitres(reply.content, keep_input=True).parameters)


def test_the_mod_stops_a_trap_weight_round_before_the_client_trains():
    sent = TrapWeightServer().send(build_model("mlp", MNIST, 10), MNIST)
    before = {k: v.clone() for k, v in build_model("mlp", MNIST, 10, seed=3).state_dict().items()}
    reply, trained, mod = _round(sent)
    assert reply.has_error()
    assert "failed: trap weights" in reply.error.reason and reply.error.reason.startswith("leakage audit_mod: ")
    # the client never loaded the sent weights nor trained: its model is as it was
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in before.items())
    assert mod.results[-1]["trap weights"].verdict == "fail" and mod.previous is None


def test_the_mod_lets_an_honest_round_train_and_remembers_it():
    sent = build_model("mlp", MNIST, 10)
    x, y = bundled_images("mnist", list(range(500, 564)))  # the client's audit batch (64: its exposure is small)
    reply, trained, mod = _round(sent, batch=(x, y))
    assert not reply.has_error()
    returned = _returned(reply)
    sent_arrays = [v.numpy() for v in sent.state_dict().values()]
    assert len(returned) == len(sent_arrays)
    assert any(not np.allclose(a, b) for a, b in zip(returned, sent_arrays))  # trained: the weights moved
    assert mod.results[-1].verdict != "fail" and mod.results[-1]["D-SNR"].verdict == "pass"
    assert mod.previous is not None  # the next round is compared with this one


def test_raise_and_warn_do_what_they_say():
    from leakage.integrations.flower_audit import AuditFailed

    sent = TrapWeightServer().send(build_model("mlp", MNIST, 10), MNIST)
    with pytest.raises(AuditFailed, match="failed: trap weights"):
        _round(sent, on_fail="raise")
    reply, _, mod = _round(sent, on_fail="warn")
    assert not reply.has_error() and mod.results[-1].verdict == "fail"  # warned, and trained anyway
    with pytest.raises(ValueError, match="on_fail must be one of stop, raise, warn"):
        _round(sent, on_fail="ignore")


def test_parameters_that_do_not_fit_the_clients_model_stop_the_round():
    reply, _, mod = _round(build_model("mlp", (1, 14, 14), 10))
    assert reply.has_error() and "do not fit the model" in reply.error.reason
    assert mod.results[-1]["architecture"].verdict == "fail"
