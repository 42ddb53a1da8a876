"""Batching a sweep's cells: defense cells that share the attack's settings are solved together,
as problems of one ``fit`` (problems = cells x victims x restarts).

Defense cells differ only in the defense the sweep appends to ``trainer.callbacks``; everything the
attack does (model, steps, optimizer, victims) comes from the rest of the config. Cells whose
configs are equal once their own defense is taken out form a group, and a group of two or more
cells runs as one fit:

- the victims' observation is built once, the config's own defenses (if any) apply to it as usual,
  then each cell's defense transforms that same observation on its own, and the defended
  observations are concatenated along the victim axis. Update keys repeat once per cell, so every
  problem gets exactly the dummy init it gets in its cell's own fit (:mod:`leakage.engine.seeding`), and a
  defense's noise is the same too (it is seeded by the update's key);
- the attack, whose problems are independent (per-problem L-BFGS, per-problem label restoration),
  solves them all at once; the run ends when every problem of every cell is done or at
  ``max_steps``;
- the report is split back per cell: each cell gets its own :class:`~leakage.reporting.callbacks.LeakageReport`
  that sees only its victims' problems, and writes ``runs/<cell>/`` as a cell's own fit does
  (TensorBoard scalars, gallery and history images, summary card, ``metrics.*``, ``gallery.png``,
  ``history.png``, ``report.html``, ``config.yaml``, ``hparams.yaml``). There is no run of the group
  itself.

A defense that changes the number or size of the updates (secure aggregation with target
``aggregate``: K updates become one of K x B images) cannot share the victim axis with the others:
its cells run as their own fits (:func:`batchable`). A cell whose defense fails on the observation
fails alone with its one-line error. If the group's fit fails, its cells are run again one by one,
so that each gets what its own fit gives; so does a group on several processes (``strategy ddp``),
whose cells are sharded fits of their own (:mod:`leakage.engine.distributed`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
import yaml

from leakage.attacks.gradient_inversion import GradientInversion
from leakage.reporting.callbacks import LeakageReport
from leakage.records import Observation, Secret
from leakage.federated.defenses import Defense, SecureAggregation
from leakage.fit import LeakageCLI
from leakage.reporting.loggers import TensorBoardLogger
from leakage.sweep.config import defense_class


class GroupError(RuntimeError):
    """The cells of a group cannot share one fit (their defended observations differ in shape)."""


class Sharded(GroupError):
    """The group's fit runs on several processes: its cells run one by one, each a sharded fit
    (not a failure: the per-cell reports of a shared fit are built in one process)."""


def batchable(defense: dict) -> bool:
    """Whether a cell with this defense (``class_path``, ``init_args``) can share a fit with others:
    every defense that keeps one update per victim of ``batch_size`` images."""
    cls = defense_class(defense["class_path"])
    if getattr(cls, "needs_client_model", False):  # label DP, Soteria: the client's model of the cell's own fit
        return False
    if issubclass(cls, SecureAggregation):
        return defense.get("init_args", {}).get("target", "aggregate") == "masked"
    return True


def group_key(cfg: dict, defense: dict) -> str:
    """What a defense cell's fit shares with the other cells of its group: its config without the
    cell's own defense (the last of ``trainer.callbacks``)."""
    rest = json.loads(json.dumps(cfg))
    callbacks = rest["trainer"]["callbacks"]
    if not callbacks or callbacks[-1] != defense:
        raise ValueError("a defense cell's config ends with its defense")
    rest["trainer"]["callbacks"] = callbacks[:-1]
    return json.dumps(rest, sort_keys=True, default=str)


@dataclass
class Member:
    """One cell of a group: its id, defense, logger and (once the fit is set up) its views and report."""

    cid: str
    spec: dict  # {"class_path", "init_args"}, as in the cell's config
    defense: Defense
    logger: TensorBoardLogger
    report: Optional[LeakageReport] = None
    error: Optional[BaseException] = None
    data: Any = None
    trainer: Any = None
    module: Any = None


# ----------------------------------------------------------------------------- a cell's view
class _CellData:
    """A cell's view of the data module: its defended observation and its part of the secret."""

    def __init__(self, dm: Any, observation: Observation, secret: Optional[Secret], defenses: list) -> None:
        self.dataset, self.source = getattr(dm, "dataset", None), getattr(dm, "source", None)
        self.observation, self.secret, self.defenses_applied = observation, secret, defenses


class _CellModule:
    """A cell's view of the attack: the rows of its problems, nothing else."""

    best_restarts = GradientInversion.best_restarts  # reads only hparams.restarts and failed

    def __init__(self, module: GradientInversion, rows: slice, observation: Observation, group: "GroupReport") -> None:
        self._module, self._rows, self._group = module, rows, group
        self.observation = observation
        self.total_victims = observation.num_victims
        self.hparams = module.hparams

    @property
    def problem_losses(self):
        losses = self._module.problem_losses
        return None if losses is None else losses[self._rows]

    @property
    def best_losses(self):
        losses = self._module.best_losses
        return None if losses is None else losses[self._rows]

    @property
    def failed(self):
        return self._module.failed[self._rows]

    @property
    def dummy_data(self):
        return self._module.dummy_data.detach()[self._rows]

    def recovered_labels(self):
        return self._module.recovered_labels()[self._rows]

    kind = property(lambda self: self._module.kind)
    results = GradientInversion.results  # reads reconstruction, recovered_labels, best_restarts, hparams, kind

    def reconstruction(self):
        return self._module.reconstruction()[self._rows]

    def final_evaluation(self) -> dict:
        return {k: v[self._rows] for k, v in self._group.evaluation(self._module).items()}

    def exact(self):
        return self._module.exact()[self._rows]

    def describe(self) -> str:
        return self._module.describe()


class _CellTrainer:
    """A cell's view of the trainer: its own data view and TensorBoard logger; the steps are the group's."""

    def __init__(self, trainer: pl.Trainer, data: _CellData, logger: TensorBoardLogger) -> None:
        self._trainer, self.datamodule, self.logger = trainer, data, logger
        self.loggers = [logger]

    is_global_zero = property(lambda self: self._trainer.is_global_zero)
    global_step = property(lambda self: self._trainer.global_step)
    max_steps = property(lambda self: self._trainer.max_steps)
    should_stop = property(lambda self: self._trainer.should_stop)
    default_root_dir = property(lambda self: self._trainer.default_root_dir)
    world_size = property(lambda self: self._trainer.world_size)
    strategy = property(lambda self: self._trainer.strategy)
    log_dir = property(lambda self: self.logger.log_dir)


# ----------------------------------------------------------------------------- the group's callback
class GroupReport(pl.Callback):
    """Set up a group's observation (every cell's defended copy of the victims' updates, in cell
    order) and report every cell on its own. Takes the place of the fit's ``LeakageReport``."""

    def __init__(self, members: list[Member], report: LeakageReport) -> None:
        self.members = members
        self._settings = {k: getattr(report, k) for k in
                          ("success_ssim", "log_every_n_steps", "image_every_n_steps", "save_artifacts", "hparams")}
        self._evaluation: Optional[dict] = None

    @property
    def live(self) -> list[Member]:
        return [m for m in self.members if m.error is None]

    def evaluation(self, module: GradientInversion) -> dict:
        """The attack's final evaluation of every problem, computed once for all cells."""
        if self._evaluation is None:
            self._evaluation = module.final_evaluation()
        return self._evaluation

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        base, secret = dm.observation, dm.secret
        applied = list(getattr(dm, "defenses_applied", []))  # the config's own defenses, applied before
        parts = []
        for m in self.members:
            try:
                obs, sec = m.defense.transform(base, secret)
            except (ValueError, TypeError, RuntimeError) as err:  # this cell fails alone
                m.error = err
                continue
            if (obs.num_victims, obs.batch_size) != (base.num_victims, base.batch_size):
                raise GroupError(f"defense of cell {m.cid} changes the updates' number or size")
            parts.append((m, obs, sec))
        if not parts:
            raise GroupError("no cell of the group could be set up")
        V, R = base.num_victims, pl_module.hparams.restarts
        gradients = {n: torch.cat([o.gradients[n] for _, o, _ in parts]) for n in base.gradients}
        dm.observation = replace(base, gradients=gradients,
                                 update_keys=tuple(k for _, o, _ in parts for k in o.update_keys),
                                 # public labels (labels: known, TabLeak's setting): every cell's victims'
                                 labels=None if base.labels is None else torch.cat([o.labels for _, o, _ in parts]))
        if secret is not None:
            dm.secret = Secret(images=torch.cat([s.images for _, _, s in parts]),
                               labels=torch.cat([s.labels for _, _, s in parts]),
                               indices=[ix for _, _, s in parts for ix in s.indices])
        for i, (m, obs, sec) in enumerate(parts):
            m.data = _CellData(dm, obs, sec, [*applied, m.defense])
            m.trainer = _CellTrainer(trainer, m.data, m.logger)
            m.module = _CellModule(pl_module, slice(i * V * R, (i + 1) * V * R), obs, self)
            m.report = LeakageReport(**self._settings)

    def on_train_start(self, trainer, pl_module) -> None:
        params = {**pl_module.hparams_initial, **getattr(trainer.datamodule, "hparams_initial", {})}
        params.pop("_class_path", None)
        for m in self.live:
            if trainer.is_global_zero:  # what Lightning logs for a fit's logger: hparams.yaml
                m.logger.log_hyperparams(params)
                m.logger.save()
            m.report.on_train_start(m.trainer, m.module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for m in self.live:
            m.report.on_train_batch_end(m.trainer, m.module, outputs, batch, batch_idx)

    def on_train_end(self, trainer, pl_module) -> None:
        for m in self.live:
            m.report.on_train_end(m.trainer, m.module)
            if trainer.is_global_zero:
                m.logger.finalize("success")


class GroupCLI(LeakageCLI):
    """``leakage fit`` of a group's shared config, reported per cell by a :class:`GroupReport`."""

    def __init__(self, members: list[Member], *args: Any, **kwargs: Any) -> None:
        self.members = members
        super().__init__(*args, **kwargs)

    def before_fit(self) -> None:
        if self.trainer.world_size > 1:  # every rank sees this, so every rank runs the cells one by one
            raise Sharded("a batched fit runs in one process; on several, each cell is a sharded fit of its own")
        super().before_fit()
        callbacks = self.trainer.callbacks
        i = next(i for i, cb in enumerate(callbacks) if isinstance(cb, LeakageReport))
        callbacks[i] = GroupReport(self.members, callbacks[i])
        self.trainer.loggers = []  # every cell has its own logger; the group has no run of its own

    def cell_config(self, member: Member) -> str:
        """The cell's config as its own fit would save it: the group's, its defense appended, its logger."""
        try:
            cfg = yaml.safe_load(self._parser(self.subcommand).dump(self.config.get(str(self.subcommand), self.config),
                                                                    skip_none=False, skip_check=True))
        except Exception:  # noqa: BLE001 - a record only; the cell file has the config as given
            return ""
        trainer = cfg.setdefault("trainer", {})
        trainer["callbacks"] = [*(trainer.get("callbacks") or []), member.spec]
        logger = trainer.get("logger")
        if isinstance(logger, dict) and isinstance(logger.get("init_args"), dict):
            logger["init_args"]["version"] = member.cid
        return yaml.safe_dump(cfg, sort_keys=False)


def write_config(run_dir: Path, text: str) -> None:
    if text:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(text)
