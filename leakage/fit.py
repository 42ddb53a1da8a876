"""``leakage fit``: the LightningCLI over the attack, the victim data and the report.

Both doors use it: the ``leakage`` console script (:mod:`leakage.cli`) and the sweep's cells
(:mod:`leakage.sweep`).
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from .callbacks import LeakageReport, fresh_run_dir

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

    def before_instantiate_classes(self) -> None:
        # Without a logger, Lightning writes a run's files (config.yaml, the report's artifacts) into
        # default_root_dir, i.e. the current folder, over files of the same name. Give such a run a
        # fresh folder of its own instead: logs/leakage/version_N (under default_root_dir if given).
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config["trainer"]
        if trainer.get("logger") is False:
            base = Path(trainer.get("default_root_dir") or "logs")
            trainer["default_root_dir"] = str(fresh_run_dir(base))

    def before_fit(self) -> None:
        if not self.trainer.loggers:  # the report's artifacts go beside config.yaml, in the fresh folder
            for cb in self.trainer.callbacks:
                if isinstance(cb, LeakageReport) and cb.run_dir is None:
                    cb.run_dir = Path(self.trainer.default_root_dir)
