"""Flower (flwr) integration: record what each client sends, as an honest-but-curious server.

Needs the optional extra: ``pip install "leakage[flower]"``. Three pieces:

- :class:`CaptureStrategy` wraps any Flower ``Strategy`` (``FedAvg``, ...). It passes everything
  through, and in ``aggregate_fit`` saves, per round and client, the update (the parameters the
  client returned minus the global parameters it received), the global weights and the client's
  ``num_examples`` as a capture file (:mod:`leakage.federated.capture`) that
  ``leakage fit --data.source CapturedGradients --data.source.gradient_file FILE`` attacks directly. Flower's
  ordered list of arrays is mapped to the model's ``state_dict`` names (parameters and buffers in
  ``state_dict`` order, the convention of Flower's PyTorch examples) and checked against the model.
  In ``configure_fit`` it adds each client's public ``update_key`` to the fit config, which seeds the
  client's mini-batch order (:func:`leakage.federated.fedavg.batch_schedule`).
- :class:`TorchFedAvgClient`, a ``NumPyClient`` that trains a PyTorch model with FedAvg local steps
  (:func:`leakage.federated.fedavg.train_locally`) with the settings the server sends in its fit config.
- :class:`InProcessClientProxy` and :func:`run_in_process`: Flower's own ``Server`` loop (configure,
  fit, aggregate, round after round) with clients called in the same process, no network.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from flwr.client import Client, NumPyClient
from flwr.common import (
    DisconnectRes,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Parameters,
    ReconnectIns,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import Server
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from torch import Tensor, nn

from leakage.federated.capture import CLIENT_SETTINGS, save_capture
from leakage.federated.fedavg import FedAvgClient, train_locally
from leakage.engine.seeding import derive_seed

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


# ------------------------------------------------------------ name mapping
def state_to_ndarrays(model: nn.Module) -> list[np.ndarray]:
    """The model's weights as Flower's ordered list: every ``state_dict`` entry, in order."""
    return [v.detach().cpu().numpy() for v in model.state_dict().values()]


def ndarrays_to_state(model: nn.Module, arrays: Sequence[np.ndarray], what: str = "Flower parameters") -> dict[str, Tensor]:
    """Name Flower's ordered arrays by the model's ``state_dict`` (parameters and buffers, in
    order), checking their number and shapes; a mismatch is a one-line ``ValueError``."""
    state = model.state_dict()
    if len(arrays) != len(state):
        raise ValueError(
            f"{what} do not fit the model: {len(arrays)} arrays, the model's state_dict has {len(state)} entries "
            f"({', '.join(list(state)[:4])}{', ...' if len(state) > 4 else ''})"
        )
    out = {}
    for (name, ref), arr in zip(state.items(), arrays):
        arr = np.asarray(arr)
        if tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(
                f"{what} do not fit the model: array {len(out)} has shape {tuple(arr.shape)}, "
                f"state_dict entry {name!r} needs {tuple(ref.shape)}"
            )
        out[name] = torch.from_numpy(np.array(arr, copy=True)).to(ref.dtype)
    return out


def update_key(server_round: int, cid: str) -> int:
    """The public key of the update of client ``cid`` in ``server_round`` (seeds its mini-batch order)."""
    return derive_seed("flower", int(server_round), str(cid))


# ---------------------------------------------------------------- strategy
class CaptureStrategy(Strategy):
    """A Strategy wrapper that saves every client's update per round, then lets ``strategy`` run.

    Args:
        strategy: the deployment's strategy (e.g. ``flwr.server.strategy.FedAvg``).
        model: the global model (only its ``state_dict`` names and shapes are used).
        out_dir: capture files go to ``out_dir/round_RRR/client_<cid>.safetensors``.
    """

    def __init__(self, strategy: Strategy, model: nn.Module, out_dir: str | Path) -> None:
        super().__init__()
        self.strategy = strategy
        self.model = model
        self.out_dir = Path(out_dir)
        self.param_names = [n for n, _ in model.named_parameters()]
        self._sent: dict[int, tuple[dict[str, Tensor], dict[str, dict[str, Scalar]]]] = {}
        self.saved: list[Path] = []

    def __repr__(self) -> str:
        return f"CaptureStrategy({self.strategy!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Optional[Parameters]:
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        global_state = ndarrays_to_state(self.model, parameters_to_ndarrays(parameters), "the global parameters")
        out, configs = [], {}
        for proxy, ins in self.strategy.configure_fit(server_round, parameters, client_manager):
            config = dict(ins.config)
            config["update_key"] = update_key(server_round, proxy.cid)
            configs[proxy.cid] = config
            out.append((proxy, FitIns(ins.parameters, config)))
        self._sent[server_round] = (global_state, configs)
        return out

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures):
        global_state, configs = self._sent.pop(server_round)
        for proxy, res in results:
            returned = ndarrays_to_state(self.model, parameters_to_ndarrays(res.parameters),
                                         f"the parameters of client {proxy.cid} in round {server_round}")
            update = {n: returned[n].float() - global_state[n].float() for n in self.param_names}
            config = configs.get(proxy.cid, {})
            path = self.out_dir / f"round_{server_round:03d}" / f"client_{_SAFE.sub('_', str(proxy.cid))}.safetensors"
            save_capture(path, update, global_state, res.num_examples, share="delta",
                         update_key=config.get("update_key"),
                         settings={k: config[k] for k in CLIENT_SETTINGS if k in config},
                         round=server_round, client=proxy.cid)
            self.saved.append(path)
        return self.strategy.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results, failures):
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters):
        return self.strategy.evaluate(server_round, parameters)


# ------------------------------------------------------------------ client
class TorchFedAvgClient(NumPyClient):
    """A Flower client that trains ``model`` on its images ``x`` ``[B, C, H, W]`` and labels ``y``
    ``[B]`` with FedAvg local SGD steps. The fit config gives ``local_steps``, ``local_lr``,
    ``local_batch_size``, ``shuffle``, ``shuffle_seed`` and ``update_key`` (defaults: one step of
    rate 0.1 on the whole batch)."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        self.model, self.x, self.y = model, x, y

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        return state_to_ndarrays(self.model)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Scalar]):
        self.model.load_state_dict(ndarrays_to_state(self.model, parameters))
        client = FedAvgClient(
            local_steps=int(config.get("local_steps", 1)),
            local_lr=float(config.get("local_lr", 0.1)),
            local_batch_size=int(config.get("local_batch_size", self.x.shape[0])),
            shuffle=bool(config.get("shuffle", True)),
            shuffle_seed=int(config.get("shuffle_seed", 0)),
        )
        train_locally(self.model, self.x, self.y, client, int(config.get("update_key", 0)))
        return state_to_ndarrays(self.model), int(self.x.shape[0]), {}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Scalar]):
        self.model.load_state_dict(ndarrays_to_state(self.model, parameters))
        with torch.no_grad():
            logits = self.model(self.x)
            loss = torch.nn.functional.cross_entropy(logits, self.y).item()
            acc = (logits.argmax(1) == self.y).float().mean().item()
        return loss, int(self.x.shape[0]), {"accuracy": acc}


# ------------------------------------------------------------- in process
class InProcessClientProxy(ClientProxy):
    """A ``ClientProxy`` that calls a Flower ``Client`` in the same process (no network)."""

    def __init__(self, cid: str, client: Client) -> None:
        super().__init__(cid)
        self.client = client

    def get_properties(self, ins: GetPropertiesIns, timeout, group_id) -> GetPropertiesRes:
        return self.client.get_properties(ins)

    def get_parameters(self, ins: GetParametersIns, timeout, group_id) -> GetParametersRes:
        return self.client.get_parameters(ins)

    def fit(self, ins: FitIns, timeout, group_id) -> FitRes:
        return self.client.fit(ins)

    def evaluate(self, ins: EvaluateIns, timeout, group_id) -> EvaluateRes:
        return self.client.evaluate(ins)

    def reconnect(self, ins: ReconnectIns, timeout, group_id) -> DisconnectRes:
        return DisconnectRes(reason="")


def run_in_process(strategy: Strategy, clients: dict[str, Any], num_rounds: int):
    """Run Flower's ``Server`` for ``num_rounds`` rounds with ``clients`` (``{cid: NumPyClient or
    Client}``) called in this process. Returns Flower's ``History``."""
    manager = SimpleClientManager()
    for cid, c in clients.items():
        manager.register(InProcessClientProxy(cid, c.to_client() if isinstance(c, NumPyClient) else c))
    history, _ = Server(client_manager=manager, strategy=strategy).fit(num_rounds=num_rounds, timeout=None)
    return history


def initial_parameters(model: nn.Module) -> Parameters:
    """The model's weights as Flower ``Parameters`` (for a strategy's ``initial_parameters``)."""
    return ndarrays_to_parameters(state_to_ndarrays(model))
