"""``leakage fit``: the LightningCLI over the attack, the victim data and the report.

Both doors use it: the ``leakage`` console script (:mod:`leakage.cli`) and the sweep's cells
(:mod:`leakage.sweep`).

Bad settings fail before the run starts (no run folder is created): the config files are read
first and the trainer section's class paths checked before any is imported
(:mod:`leakage.classpaths`), every float setting must be finite in float32 and every seed in
[0, 2**63), the precision must be full (32 or 64), the step budget must be set (and not emptied by
``max_epochs`` or ``limit_train_batches`` 0), the run folder must be writable, an ``EarlyStopping``
must monitor what the attack logs, the Trainer's own refusals (an accelerator this machine lacks,
...) become one-line errors, the attack's memory is estimated (:mod:`leakage.engine.memory`) before the
victims are read, and the victims are read and their
gradients computed before the logger creates the run's folder, and the attack checks that it can
attack them (:meth:`leakage.attacks.family.Attack.check_observation`: a label strategy, a server, a batch
size it cannot take) before the folder exists too.
"""

from __future__ import annotations

import inspect
import sys
import typing
from argparse import ArgumentError
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.trainer import Trainer

from leakage.engine import checks
from leakage.attacks.gradient_inversion import LOGGED_METRICS
from leakage.reporting.callbacks import LeakageReport
from leakage.reporting.runfiles import fresh_run_dir
from leakage.classpaths import check_trainer_class_paths
from leakage.engine.distributed import DDP_NAMES, ShardedDDPStrategy, launched_as_rank_zero
from leakage.helppage import HELP_ALL, short_help
from leakage.engine.errors import one_line, parser_error_line
from leakage.attacks.family import ATTACKS, DEFAULT_ATTACK, attack_class, attack_path
from leakage.reporting.loggers import CLASS_PATH as LOGGER_CLASS_PATH
from leakage.reporting.loggers import LIGHTNING_CLASS_PATHS
from leakage.engine.precision import check_precision
from leakage.reporting.runfiles import check_writable

TRAINER_DEFAULTS = {
    "max_steps": 300,
    "logger": {
        "class_path": "leakage.reporting.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "leakage"},
    },
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,
    "log_every_n_steps": 10,
}

FIT_DESCRIPTION = (
    "Run one gradient-inversion attack: reconstruct the victims' images and labels from the gradients "
    "their client shares. Every setting below can be given in a --config file or on the command line. "
    "On N processes (CPUs, GPUs or nodes): --trainer.strategy ddp --trainer.devices N (and --trainer.num_nodes M "
    "under torchrun or SLURM) runs leakage.engine.distributed.ShardedDDPStrategy: each process attacks its own "
    "shard of the victims, nothing is averaged across processes, and rank 0 writes the results of all."
)

_CONFIG_FLAGS = ("--config", "-c")


def _config_paths(args: list[str]) -> Iterator[str]:
    """The values of every ``--config``/``-c`` in a command line."""
    for i, a in enumerate(args):
        if a in _CONFIG_FLAGS and i + 1 < len(args):
            yield args[i + 1]
        elif a.startswith("--config="):
            yield a.split("=", 1)[1]


def _config_attack(value: str) -> Any:
    """The ``attack`` a ``--config`` value (a file or inline YAML) sets, or None."""
    try:
        path = Path(value)
        data = yaml.safe_load(path.read_text() if path.is_file() else value)
    except (OSError, ValueError, yaml.YAMLError):  # the parser says why it cannot read it
        return None
    return data.get("attack") if isinstance(data, dict) else None


def attack_last(args: list[str]) -> list[str]:
    """``args`` with every ``--attack NAME`` (or ``--attack=NAME``) moved to the end, in order: an attack
    named on the command line wins over a config file's ``attack:`` wherever it stands, before or after
    ``--config`` (the parser lets the last value win; the attack decides the ``--model.*`` options)."""
    rest, attack = [], []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--attack" and i + 1 < len(args):
            attack += args[i:i + 2]
            i += 2
            continue
        (attack if a.startswith("--attack=") else rest).append(a)
        i += 1
    return rest + attack


def chosen_attack(args: list[str]) -> Any:
    """The attack a ``leakage fit`` command line selects (``--attack NAME`` wherever it stands, else the
    last ``attack: NAME`` of the configs given), or None for the default. Read before the parser is
    built, since the attack's class decides the ``--model.*`` options."""
    chosen = None
    args = attack_last(args)
    for i, a in enumerate(args):
        if a in _CONFIG_FLAGS and i + 1 < len(args):
            chosen = _config_attack(args[i + 1]) or chosen
        elif a.startswith("--config="):
            chosen = _config_attack(a.split("=", 1)[1]) or chosen
        elif a == "--attack" and i + 1 < len(args):
            chosen = args[i + 1]
        elif a.startswith("--attack="):
            chosen = a.split("=", 1)[1]
    return chosen


def moved_settings(data_class: Any, model_class: Any) -> dict[str, str]:
    """Every setting that has moved, ``{"data.num_bins": "its new place", ...}``: the ``MOVED`` class
    attribute (``{old key: where it is now}``) of the data module's and the attack's classes. A setting
    that moved into an object (a source, a client, a server; an objective, a label strategy, ...) is
    refused in one line that names its new place: no alias keeps the old key working."""
    moved = {}
    for section, cls in (("data", data_class), ("model", model_class)):
        for key, place in (getattr(cls, "MOVED", None) or {}).items():
            moved[f"{section}.{key}"] = place
    return moved


def check_moved_settings(args: list[str], moved: dict[str, str]) -> None:
    """Refuse, in one line naming its new place, a moved setting given on the command line
    (``--data.num_bins 64``, ``--data.num_bins=64``) or in a ``--config`` file's ``data:``/``model:``."""
    if not moved:
        return
    for a in args:
        key = a[2:].split("=", 1)[0] if a.startswith("--") else None
        if key in moved:
            raise ValueError(f"--{key} has moved: {moved[key]}")
    for value in _config_paths(args):
        try:
            path = Path(value)
            data = yaml.safe_load(path.read_text() if path.is_file() else value)
        except (OSError, ValueError, yaml.YAMLError):  # check_config_file says why it cannot be read
            continue
        for section in ("data", "model"):
            block = data.get(section) if isinstance(data, dict) else None
            for key in block if isinstance(block, dict) else ():
                if f"{section}.{key}" in moved:
                    raise ValueError(f"{value}: {section}.{key} has moved: {moved[f'{section}.{key}']}")


def _subclasses(cls: type) -> list[type]:
    """``cls``'s subclasses, those jsonargparse makes for a ``lazy_instance`` default left out."""
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))
            if not hasattr(c, "lazy_get_init_data")]


def object_choices(model_class: Any) -> dict[str, list[type]]:
    """The attack's arguments that take one of several classes (``optimizer``: ``LBFGS``, ``Adam``,
    ``SignedAdam``), ``{argument: its classes}``."""
    try:
        hints = typing.get_type_hints(model_class.__init__)
    except Exception:  # an annotation that does not resolve here: jsonargparse reports it
        return {}
    return {name: classes for name, hint in hints.items()
            if inspect.isclass(hint) and hint.__module__.startswith("leakage.") and (classes := _subclasses(hint))}


def check_object_names(args: list[str], choices: dict[str, list[type]]) -> None:
    """Refuse, in one line naming the classes, a value of an argument that takes a class that is no
    class's name or import path (``--model.optimizer adam``, or ``optimizer: adam`` in a config's
    ``model:``): jsonargparse would only say that it expects an import path."""

    def check(name: str, value: Any, where: str) -> None:
        classes = choices[name]
        names = [c.__name__ for c in classes]
        if not isinstance(value, str) or value.lstrip().startswith("{") or "." in value or value in names:
            return  # a class by name or import path, or a mapping (class_path and init_args): the parser reads it
        meant = next((c.__name__ for c in classes
                      if c.__name__.lower() == value.replace("_", "").replace("-", "").lower()), None)
        if meant is None:
            raise ValueError(f"{where}: unknown {name}; choose one of {', '.join(names)} "
                             f"(--model.{name} NAME)")
        others = ", ".join(n for n in sorted(names) if n != meant)
        raise ValueError(f"{where}: the {name} is a class now: --model.{name} {meant} (or {others})")

    if not choices:
        return
    for i, a in enumerate(args):
        key, eq, value = a[2:].partition("=") if a.startswith("--model.") else ("", "", "")
        name = key[len("model."):]
        if name in choices:
            if not eq:
                value = args[i + 1] if i + 1 < len(args) else None
            check(name, value, f"--model.{name} {value!r}")
    for path in _config_paths(args):
        try:
            data = yaml.safe_load(Path(path).read_text() if Path(path).is_file() else path)
        except (OSError, ValueError, yaml.YAMLError):  # check_config_file says why it cannot be read
            continue
        block = data.get("model") if isinstance(data, dict) else None
        for name in choices:
            if isinstance(block, dict) and name in block:
                check(name, block[name], f"{path}: model.{name} {block[name]!r}")


def attack_arguments(section: dict, cls: Any) -> dict[str, Any]:
    """The arguments of attack class ``cls`` that a config's ``model:`` section gives, its settings
    objects built as ``leakage fit`` builds them (``optimizer:`` by ``class_path``, ``objective:`` as a
    mapping); a setting the section leaves out is its default. Raises jsonargparse's error for a bad
    section."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "model", instantiate=False, fail_untyped=False)
    return dict(vars(parser.instantiate(parser.parse_object({"model": section})).model))


def check_config_file(value: str) -> None:
    """Refuse a ``--config`` file that is a folder, unreadable, not YAML or not a mapping, naming it.

    A value that is no existing path is left to the parser (it also takes inline YAML, and says
    when a file does not exist)."""
    path = Path(value)
    if not path.exists():
        return
    if path.is_dir():
        raise ValueError(f"config {path} is a directory, not a config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or one_line(err)
        raise ValueError(f"cannot parse config file {path}: {problem}{where}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read config file {path}: {one_line(err)}") from None
    if data is not None and not isinstance(data, dict):
        raise ValueError(
            f"config file {path} must hold a mapping of settings (trainer:, model:, data:, ...), "
            f"got a {type(data).__name__}"
        )


def _numbers(value: Any, key: str) -> Iterator[tuple[str, float | int]]:
    """Every number in a parsed config, with its dotted key (list items as ``key[i]``)."""
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        yield key, value
    elif isinstance(value, dict) or hasattr(value, "items"):
        for k, v in value.items():
            # an object's settings are named as on the command line (model.optimizer.lr), without init_args
            k = ".".join(part for part in str(k).split(".") if part != "init_args")
            yield from _numbers(v, f"{key}.{k}" if key and k else key or k)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{key}[{i}]")


def check_numbers(config: Any) -> None:
    """Every float setting must be finite in float32 (the attack's tensors are), every seed an int64."""
    for key, value in _numbers(config, ""):
        if isinstance(value, float):
            checks.float32_number(key, value)
        elif checks.is_seed_key(key):
            checks.seed(key, value)


def _trainer_error(err: Exception, config: dict) -> ValueError:
    """A one-line error for the Trainer's refusal of its settings."""
    reason = one_line(err)
    accelerator = str(config.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda", "mps", "tpu"):
        return ValueError(
            f"cannot set up the trainer with --trainer.accelerator {accelerator}: {reason} "
            "(use --trainer.accelerator cpu, or auto, on a machine without one)"
        )
    return ValueError(f"cannot set up the trainer: {reason}")


def _own_tensorboard_logger(logger: Any) -> None:
    """Run a configured Lightning ``TensorBoardLogger`` as :class:`leakage.reporting.loggers.TensorBoardLogger`
    (the same arguments, without ``epoch`` and ``hp_metric``), in place."""
    for item in logger if isinstance(logger, list) else [logger]:
        if not hasattr(item, "get") or item.get("class_path") not in LIGHTNING_CLASS_PATHS:
            continue
        item["class_path"] = LOGGER_CLASS_PATH
        init_args = item.get("init_args")
        if init_args is not None and "default_hp_metric" in init_args:
            init_args["default_hp_metric"] = False


def check_run_settings(trainer: dict) -> None:
    """Refuse, before anything runs, a budget that runs no attack step and a run folder that cannot
    be written (a path through a file, a read-only folder)."""
    for key in ("max_epochs", "limit_train_batches"):
        value = trainer.get(key)
        if value is not None and not isinstance(value, bool) and value == 0:
            raise ValueError(f"nothing to run: --trainer.{key} 0 runs no attack step; leave it unset (the "
                             "attack's budget is --trainer.max_steps)")
    if trainer.get("default_root_dir"):
        check_writable(trainer["default_root_dir"], "--trainer.default_root_dir")
    logger = trainer.get("logger")
    if logger is False:
        check_writable(trainer.get("default_root_dir") or "logs", "the run folder's parent")
    for item in logger if isinstance(logger, list) else [logger]:
        init_args = item.get("init_args") if hasattr(item, "get") else None
        save_dir = init_args.get("save_dir") if hasattr(init_args, "get") else None
        if isinstance(save_dir, (str, Path)) and str(save_dir):
            check_writable(save_dir, "the logger's save_dir")


class LeakageCLI(LightningCLI):
    """The LightningCLI of ``leakage fit``: ``fit`` is its only command (an attack has nothing to
    validate, test or predict).

    The attack class is the one the command line selects (``--attack`` or ``attack:`` in a config:
    a name of :data:`leakage.attacks.family.ATTACKS`, never an arbitrary import path), else the model class
    given (``GradientInversion``); the ``--model.*`` options are that class's arguments."""

    def __init__(self, *args: Any, parser_kwargs: dict | None = None, **kwargs: Any) -> None:
        given = kwargs.get("args")
        if given is None:  # the console: LightningCLI reads sys.argv itself (and warns when given both)
            sys.argv[1:] = attack_last(sys.argv[1:])
        elif isinstance(given, (list, tuple)):  # (a dict of settings has no order)
            kwargs["args"] = attack_last(list(given))
        chosen = chosen_attack(list(sys.argv[1:] if kwargs.get("args") is None else kwargs["args"]))
        if chosen is not None:
            args = (attack_class(chosen), *args[1:])
        parser_kwargs = dict(parser_kwargs or {})
        parser_kwargs.setdefault("prog", "leakage")
        fit_kwargs = dict(parser_kwargs.get("fit") or {})
        fit_kwargs.setdefault("description", FIT_DESCRIPTION)
        parser_kwargs["fit"] = fit_kwargs
        super().__init__(*args, parser_kwargs=parser_kwargs, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--attack", type=str, default=DEFAULT_ATTACK,
            help="the attack, whose settings are the --model.* options: "
                 + ", ".join(f"{name} ({path.rsplit('.', 1)[-1]})" for name, path in ATTACKS.items())
                 + ". `leakage fit --attack NAME --help` lists that attack's options")
        parser.add_lightning_class_args(LeakageReport, "report")
        # the data module's objects by default (a source, a client, a server), named in --help and config.yaml
        parser.set_defaults({f"data.{key}": value
                             for key, value in (getattr(self.datamodule_class, "CLI_DEFAULTS", None) or {}).items()})
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def option_strings(self) -> list[str]:
        """Every option ``leakage fit`` takes (for "did you mean" hints)."""
        parser = self._subcommand_parsers.get("fit") if hasattr(self, "_subcommand_parsers") else None
        actions = getattr(parser or self.parser, "_actions", [])
        return [s for a in actions for s in a.option_strings]

    def parse_arguments(self, parser, args) -> None:
        if isinstance(args, (list, tuple)) or args is None:
            argv = list(sys.argv[1:] if args is None else args)
            if HELP_ALL in argv:  # jsonargparse's full page
                argv = [("--help" if a == HELP_ALL else a) for a in argv]
                if args is None:
                    sys.argv[1:] = argv
                else:
                    args = argv
            elif "-h" in argv or "--help" in argv:
                print(short_help(self._subcommand_parsers["fit"], FIT_DESCRIPTION), end="")
                sys.exit(0)
            for value in _config_paths(argv):
                check_config_file(value)
            # before the parser imports any class path: the trainer section names no user module
            check_trainer_class_paths(argv, _config_paths(argv))
            check_moved_settings(argv, moved_settings(self.datamodule_class, self.model_class))
            check_object_names(argv, object_choices(self.model_class))
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            # the message stays jsonargparse's (the sweep reads it); the one line rides along
            err.leakage_line = parser_error_line(str(err), self.option_strings())  # type: ignore[attr-defined]
            raise

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        model_class = f"{self.model_class.__module__}.{self.model_class.__qualname__}"
        if attack_path(config.get("attack", DEFAULT_ATTACK)) != model_class:  # the parser read what the CLI chose
            raise ValueError(f"attack {config.get('attack')!r} is set where `leakage fit` cannot read it first: "
                             "give it in a --config file or as --attack NAME")
        check_numbers(config)
        trainer = config.get("trainer") or {}
        check_precision(trainer.get("precision"))
        steps = trainer.get("max_steps")
        if steps is None or steps < 1:
            raise ValueError(
                "set the attack budget with --trainer.max_steps N (one step is one attack iteration): "
                f"N must be >= 1, got {steps}"
            )
        self.model_class.check_budget(config.get("model") or {}, steps)  # before a run folder is made
        _own_tensorboard_logger(trainer.get("logger"))
        check_run_settings(trainer)
        # Without a logger, Lightning writes a run's files (config.yaml, the report's artifacts) into
        # default_root_dir, i.e. the current folder, over files of the same name. Give such a run a
        # fresh folder of its own instead: logs/leakage/version_N (under default_root_dir if given).
        # On several processes only rank 0 makes it (the others write nothing; Lightning gives them
        # rank 0's folder where it needs one).
        if trainer.get("logger") is False:
            base = Path(trainer.get("default_root_dir") or "logs")
            trainer["default_root_dir"] = str(fresh_run_dir(base) if launched_as_rank_zero() else base)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        strategy = kwargs.get("strategy", config.get("strategy", "auto"))
        if isinstance(strategy, str) and strategy in DDP_NAMES:
            # "ddp" is the attack's sharded DDP: Lightning's launching without averaging (see
            # leakage.engine.distributed.ShardedDDPStrategy)
            kwargs["strategy"] = ShardedDDPStrategy(start_method=DDP_NAMES[strategy])
        trainer = self._trainer(**kwargs)
        chosen = trainer.strategy
        if isinstance(chosen, DDPStrategy) and not isinstance(chosen, ShardedDDPStrategy):
            # Lightning's own DDP (what "auto" picks for several devices, or one given by class path)
            # would wrap the attack in DistributedDataParallel: run it sharded instead, same settings
            kwargs["strategy"] = ShardedDDPStrategy(
                start_method=chosen._start_method, process_group_backend=chosen.process_group_backend,
                timeout=chosen._timeout)
            trainer = self._trainer(**kwargs)
        elif not isinstance(chosen, (SingleDeviceStrategy, ShardedDDPStrategy)):
            name = getattr(chosen, "strategy_name", None) or type(chosen).__name__
            raise ValueError(
                f"cannot run the attack with strategy {name!r}: use --trainer.strategy ddp (each process attacks "
                "its own shard of the victims) or auto (one device)"
            )
        return trainer

    def _trainer(self, **kwargs: Any) -> Trainer:
        try:
            return super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as err:
            # Trainer.__init__ refusing a setting: an unknown or unavailable accelerator, strategy,
            # device count, step or epoch budget (MisconfigurationException is Lightning's "you
            # configured it wrong"; ImportError: the accelerator's package is not installed)
            raise _trainer_error(err, self._get(self.config, "trainer", default={})) from None

    def _check_memory(self, victims: int | None = None) -> None:
        """Refuse an attack that needs more memory than this machine (or GPU) has free."""
        dm = self.datamodule
        if victims is None:
            if getattr(dm, "source", None) == "gradients":
                return  # the file says how many updates it holds
            victims = len(dm.indices) // dm.batch_size if dm.indices is not None else dm.num_victims
        client = getattr(dm, "client", None)
        shard = -(-victims // max(self.trainer.world_size, 1))  # each process attacks at most this many
        self.model.check_memory(shard, dm.batch_size, client.local_steps if client is not None else 1, self.trainer)

    def before_fit(self) -> None:
        if launched_as_rank_zero():
            print(f"torch threads: {torch.get_num_threads()} per process (OMP_NUM_THREADS=N or torch.set_num_threads "
                  "changes it; on a shared machine use 1 per process)", flush=True)
        # read the victims and compute their gradients now, before the logger creates the run's
        # folder: a bad image, a failed download or a bad gradient file leaves nothing behind
        # (the data module's setup then finds the observation ready)
        if self.datamodule is not None and getattr(self.datamodule, "observation", None) is None:
            target = getattr(self.model, "target", None)
            if target is not None and hasattr(self.datamodule, "prepare"):
                self._check_memory()  # before the victims are read and the problems allocated
                observation = self.datamodule.prepare(target)
                self._check_memory(observation.num_victims)  # a gradient file says how many it holds
        observation = getattr(self.datamodule, "observation", None) if self.datamodule is not None else None
        if observation is not None and hasattr(self.model, "check_observation"):
            # a mismatch the settings decide (yin with more images than classes, a malicious server's attack
            # against another server, CPA on one record): refused now, before the run's folder exists
            self.model.check_observation(observation)
        for cb in self.trainer.callbacks:  # Lightning would say so only after the attack, in a traceback
            monitor = getattr(cb, "monitor", None) if isinstance(cb, (EarlyStopping, ModelCheckpoint)) else None
            if monitor is not None and monitor not in LOGGED_METRICS:
                raise ValueError(f"{type(cb).__name__} monitors {monitor!r}, which the attack does not log; "
                                 f"it logs: {', '.join(LOGGED_METRICS)}")
        if not self.trainer.loggers:  # the report's artifacts go beside config.yaml, in the fresh folder
            for cb in self.trainer.callbacks:
                if isinstance(cb, LeakageReport) and cb.run_dir is None:
                    cb.run_dir = Path(self.trainer.default_root_dir)
