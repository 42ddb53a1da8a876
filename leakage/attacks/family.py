"""What every attack is, whichever family it belongs to: the result record the rest of the package reads.

Optimisation attacks (:class:`leakage.attacks.gradient_inversion.GradientInversion`: DLG, iDLG, Inverting Gradients)
search for dummies whose update matches the observed one; closed-form attacks
(:class:`leakage.attacks.closedform.ClosedFormAttack`) solve from the update directly. Both are an
:class:`Attack`: a LightningModule that ``leakage fit``, the Python API, the sweep and the
distributed strategy run with the same Trainer, and whose result the report, the metrics, the
galleries and the sweep read through these members only:

- ``target``: the frozen target model (the data module computes the victims' updates with it);
- ``hparams``: the attack's settings, at least ``model`` (the target's name) and ``restarts``;
- ``observation``, ``victims``, ``total_victims``: what it attacks (:meth:`attach`; :meth:`setup`
  takes a process's shard);
- ``dummy_data`` ``[P, B, *input_shape]``: every problem's current iterate, ``P = victims x restarts``
  (restart ``r`` of victim ``v`` is problem ``v * restarts + r``);
- :meth:`recovered_labels` ``[P, B]``;
- ``problem_losses`` ``[P]`` (None before the first step): each problem's score at its last
  evaluation, lower is better; ``best_losses`` ``[P]``: the score of what is reported (an
  optimisation attack reports each problem's best iterate, :mod:`leakage.engine.bestiterate`);
- ``failed`` ``[P]``: problems that failed numerically;
- :meth:`final_evaluation`: ``loss``, ``grad_l2`` and ``grad_cosine`` ``[P]`` at the end;
- :meth:`best_restarts`: which restart of each victim is kept, and whether all of them failed;
- ``kind`` (:mod:`leakage.data.kinds`): the observation's kind of data, which decodes, pools, scores and
  shows the reconstructions; :meth:`reconstruction` (the model inputs ``[P, B, *sample_shape]``)
  and :meth:`results` (per victim: reconstruction, labels, best problem, failed, entropy), the
  record the report and the sweep's cells read;
- ``notes``: one-line remarks on the result that reports state (labels completed from a shortfall, ...);
- :meth:`exact` ``[P]`` and :meth:`describe`: whether a result is proven exact by the update, and the
  attack in a few words, as reports state it;
- :meth:`receive`: a malicious server's model (:mod:`leakage.federated.server`) becomes the target, since the
  clients trained it.

An attack is one class plus its config; :data:`ATTACKS` names the classes a config may select
(``attack: analytic`` in a ``leakage fit`` config, ``leakage.invert(..., attack="analytic")``).
"""

from __future__ import annotations

import copy
import importlib
import inspect
from typing import Optional, Sequence, Union

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from leakage.records import Observation
from leakage.engine.distributed import check_strategy, victim_shard
from leakage.engine.models import build_model, model_name
from leakage.data.kinds import DataKind
from leakage.engine.precision import check_precision, full_precision

#: the attack classes a config may select, by name: the only classes ``attack:`` resolves to
ATTACKS = {
    "gradient_inversion": "leakage.attacks.gradient_inversion.GradientInversion",
    "analytic": "leakage.attacks.analytic.AnalyticInversion",
    "bottleneck": "leakage.attacks.bottleneck.BottleneckInversion",
    "cpa": "leakage.attacks.cpa.CocktailPartyAttack",
    "imprint": "leakage.attacks.imprint.ImprintAttack",
    "trap_weights": "leakage.attacks.trap_weights.TrapWeightAttack",
    "fishing": "leakage.attacks.fishing.FishingAttack",
    "token_set": "leakage.attacks.tokenset.TokenSetAttack",
    "tag": "leakage.attacks.tag.TAG",
    "lamp": "leakage.attacks.lamp.LAMP",
    "dager": "leakage.attacks.dager.DagerAttack",
    "decepticons": "leakage.attacks.decepticons.DecepticonAttack",
}
DEFAULT_ATTACK = "gradient_inversion"


def attack_path(value: object) -> str:
    """The class path of the attack that ``value`` names: a name of :data:`ATTACKS` or one of their
    class paths (also as exported by the package, ``leakage.AnalyticInversion``). Anything else is a
    one-line ``ValueError``, and nothing is imported to find out."""
    if isinstance(value, str):
        key = value.strip()
        if key.lower().replace("-", "_") in ATTACKS:
            return ATTACKS[key.lower().replace("-", "_")]
        for path in ATTACKS.values():
            if key in (path, "leakage." + path.rsplit(".", 1)[1]):
                return path
    text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise ValueError(f"unknown attack {text}: an attack is one of the package's: "
                     + ", ".join(f"{name} ({path})" for name, path in ATTACKS.items()))


def attack_class(value: object) -> type:
    """The attack class that ``value`` names (see :func:`attack_path`)."""
    module, _, name = attack_path(value).rpartition(".")
    return getattr(importlib.import_module(module), name)


class Attack(pl.LightningModule):
    """The members every attack has (see the module docstring); subclasses build ``target`` and
    ``hparams`` in ``__init__`` and the problems in :meth:`_attach`."""

    #: "optimisation" or "closed form"
    family = "optimisation"

    def __init__(self) -> None:
        super().__init__()
        self.observation: Optional[Observation] = None
        #: the victims (positions in the data module's observation) this process attacks, and how many
        #: there are in all: under ShardedDDPStrategy each rank attacks a contiguous shard of them
        self.victims: range = range(0)
        self.total_victims = 0
        self.problem_losses: Optional[Tensor] = None  # [P], from the last evaluation
        self.kind: Optional[DataKind] = None  # the observation's kind of data (an attack may relax it)
        #: one-line notes on the result that the report states (a label shortfall completed, ...)
        self.notes: list[str] = []
        self.register_buffer("failed", torch.zeros(0, dtype=torch.bool), persistent=False)

    def _settings_and_target(self, model: Union[nn.Module, str], input_shape: Sequence[int], num_classes: int,
                             model_seed: int, model_weights: Optional[str], record: Optional[dict] = None) -> None:
        """Save the calling ``__init__``'s arguments (or ``record``, the settings as one flat record) as
        ``hparams`` (a module given as an object by its name) and build the frozen target model."""
        frame = inspect.currentframe().f_back
        if record is not None:
            self.save_hyperparameters({**record, "model": model_name(model) if isinstance(model, nn.Module) else model})
        elif isinstance(model, nn.Module):  # the module itself is the target below, not a hyperparameter
            self.save_hyperparameters(ignore=["model"], frame=frame)
            self.hparams["model"] = model_name(model)
        else:
            self.save_hyperparameters(frame=frame)
        self.hparams.setdefault("restarts", 1)  # an attack without restarts (a closed form) has one problem per victim
        self.target = build_model(model, input_shape, num_classes, seed=model_seed, weights=model_weights)
        for p in self.target.parameters():
            p.requires_grad_(False)

    # -------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        if self.observation is None:
            # Lightning runs this after the data module's setup and the defense callbacks', so a
            # process's shard is taken from the defended updates of all victims (secure aggregation
            # groups consecutive victims before any sharding)
            check_strategy(self.trainer.strategy)
            check_precision(self.trainer.precision)
            observation = self.trainer.datamodule.observation
            if observation is None:
                raise RuntimeError("no observation: the data module has not been set up")
            shard = victim_shard(observation.num_victims, self.trainer.global_rank, self.trainer.world_size)
            self.attach(observation.select(shard), victims=shard, total_victims=observation.num_victims)

    def attach(self, observation: Observation, victims: Optional[range] = None,
               total_victims: Optional[int] = None) -> None:
        """Set up the problems of an observation: ``restarts`` per victim.

        ``victims`` (the positions of the observation's updates among ``total_victims``) is set when
        the observation is one process's shard; by default it is all of them."""
        hp = self.hparams
        if observation is None:
            raise RuntimeError("no observation: the data module has not been set up")
        if tuple(observation.input_shape) != tuple(hp.input_shape) or observation.num_classes != hp.num_classes:
            raise ValueError(
                f"the data has input shape {tuple(observation.input_shape)} and {observation.num_classes} classes, "
                f"the model was built for {tuple(hp.input_shape)} and {hp.num_classes}"
            )
        self.check_observation(observation)
        sent = observation.server.model if observation.server is not None else None
        if sent is not None:  # a malicious server's model: what the clients trained, and so the attack's target
            self.receive(copy.deepcopy(sent))
        self.check_memory(observation.num_victims, observation.batch_size,
                          observation.client.local_steps if observation.client is not None else 1, self._trainer)
        # the dummy is the model input itself unless the attack relaxes it (TabLeak's ``relax``)
        self.kind = observation.kind.relaxed(hp.get("relax", False))
        self.notes = []
        with full_precision():
            self._attach(observation)
        V = observation.num_victims
        self.victims = range(V) if victims is None else victims
        self.total_victims = V if total_victims is None else total_victims
        if len(self.victims) != V:
            raise ValueError(f"{len(self.victims)} victim positions for {V} updates")

    def receive(self, model: nn.Module) -> None:
        """Target the model a malicious server sent (the observation's ``server.model``) instead of the
        global model: the clients computed their updates on it. An attack that derives state from its
        target in ``__init__`` derives it again here."""
        for p in model.parameters():
            p.requires_grad_(False)
        self.target = model.to(self.device)

    def check_observation(self, observation: Observation) -> None:
        """Refuse, in one line, an observation this attack cannot attack as set up: a mismatch that the
        settings alone decide (a label strategy that cannot give the batch's labels, a malicious server's
        attack against another server, a batch an attack cannot take). ``leakage fit`` calls it once the
        victims' updates are computed, before the run's folder exists; :meth:`attach` calls it too."""
        strategy = self.hparams.get("labels")
        if isinstance(strategy, str):
            from leakage.attacks.labels import check_strategy

            sent = observation.server.model if observation.server is not None else None
            check_strategy(strategy, observation.batch_size, observation.num_classes,
                           public=observation.labels is not None, model=sent if sent is not None else self.target)

    @staticmethod
    def check_budget(settings: dict, max_steps: int) -> None:
        """Refuse, in one line and before any run folder is made, settings of this attack that do not
        fit a budget of ``max_steps`` steps (``settings``: the config's ``model`` section). Every
        budget fits by default."""

    def check_memory(self, victims: int, batch_size: int, local_steps: int = 1, trainer=None) -> None:
        """Refuse, before anything is allocated, the problems of ``victims`` updates of ``batch_size``
        examples that cannot fit in memory (one line with the estimate and the setting to change). An
        attack whose state is small needs no check."""

    def _attach(self, observation: Observation) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------- results
    @property
    def best_losses(self) -> Optional[Tensor]:
        """Each problem's score of what :meth:`reconstruction` reports ``[P]`` (None before the first
        step): the last evaluation's, unless the attack keeps a better iterate."""
        return self.problem_losses

    @property
    def num_problems(self) -> int:
        return self.dummy_data.shape[0]

    def recovered_labels(self) -> Tensor:
        """Hard labels ``[P, B]`` of every problem."""
        raise NotImplementedError

    def final_evaluation(self) -> dict[str, Tensor]:
        """Per-problem ``loss`` (the attack's score), gradient ``grad_l2`` and ``grad_cosine``
        distances ``[P]`` at the current reconstructions."""
        raise NotImplementedError

    def exact(self) -> Tensor:
        """Mask ``[P]`` of problems whose reconstruction is proven exact by the observed update (to float
        rounding; a closed form's certificate, :mod:`leakage.attacks.closedform`), not the result of a search: none,
        for an optimisation attack."""
        return torch.zeros(self.num_problems, dtype=torch.bool)

    def describe(self) -> str:
        """The attack in a few words, as reports state it."""
        return f"{type(self).__name__} ({self.family})"

    def reconstruction(self) -> Tensor:
        """Every problem's reported reconstruction as the model input it stands for ``[P, B, *sample_shape]``."""
        with torch.no_grad():
            return self.kind.to_input(self.dummy_data.detach())

    def results(self, evaluation: dict[str, Tensor]) -> dict[str, Optional[Tensor]]:
        """The result record per victim: ``recon`` ``[V, B, ...]`` (model inputs), ``labels``
        ``[V, B]``, ``best`` (the problem whose ``evaluation`` row stands for the victim: its best
        restart), ``failed`` ``[V]`` and ``entropy`` (pooled ensembling only, else None)."""
        best, failed = self.best_restarts(evaluation["loss"])
        recon, labels = self.reconstruction(), self.recovered_labels()
        if self.hparams.get("ensemble", "best") != "pool":
            return {"recon": recon[best].cpu(), "labels": labels[best].cpu(), "best": best, "failed": failed.cpu(),
                    "entropy": None}
        R = self.hparams.restarts
        V = best.numel()
        pooled, pooled_labels, entropy = self.kind.pool(recon.view(V, R, *recon.shape[1:]).cpu(),
                                                        labels.view(V, R, -1).cpu(), (best % R).cpu())
        return {"recon": pooled, "labels": pooled_labels, "best": best, "failed": failed.cpu(), "entropy": entropy}

    def best_restarts(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Index of the best restart per victim ``[V]`` and whether every restart failed ``[V]``."""
        R = self.hparams.restarts
        ok = torch.isfinite(losses) & ~self.failed.to(losses.device)
        scored = torch.where(ok, losses, torch.full_like(losses, float("inf"))).view(losses.shape[0] // R, R)
        best = scored.argmin(dim=1)
        failed = ~ok.view(losses.shape[0] // R, R).any(dim=1)
        return torch.arange(scored.shape[0], device=losses.device) * R + best, failed
