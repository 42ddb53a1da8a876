"""The ``leakage`` command: a LightningCLI over the attack, the victim data and the report."""

from __future__ import annotations

import re
import sys
import warnings

from lightning.pytorch.cli import LightningCLI

from .attack import GradientInversion
from .callbacks import LeakageReport
from .data import VictimDataModule

TRAINER_DEFAULTS = {
    "max_steps": 300,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "leakage"},
    },
    "enable_checkpointing": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,
    "log_every_n_steps": 10,
}


class LeakageCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(LeakageReport, "report")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def _quiet() -> None:
    # the attack's "data" is one observation, not a stream: these hints do not apply
    for msg in (".*does not have many workers.*", ".*Total length of `DataLoader` across ranks is zero.*",
                ".*`training_step` returned `None`.*", ".*GPU available but not used.*"):
        warnings.filterwarnings("ignore", message=msg)


def main(args: list[str] | None = None) -> None:
    _quiet()
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["sweep"]:
            from .sweep import main as sweep_main

            sweep_main(argv[1:])
            return
        LeakageCLI(
            GradientInversion,
            VictimDataModule,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            args=args,  # None from the console: LightningCLI reads sys.argv itself
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"leakage: error: {_reason(err)}", file=sys.stderr)
        sys.exit(2)


_OWN_PHRASES = re.compile(r"must be|must hold|unknown |needs |need |not found|does not fit|cannot |do not split")


def _reason(err: Exception) -> str:
    """One line: jsonargparse nests a class's own ValueError deep in a multi-line message (e.g. a bad
    defense setting inside ``trainer.callbacks``); surface that line instead of the wrapper's."""
    lines = [ln.strip().lstrip("- ").strip() for ln in str(err).splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(err).__name__
    own = [ln for ln in lines[1:] if _OWN_PHRASES.search(ln)]
    return own[-1] if own else lines[0]


if __name__ == "__main__":
    main()
