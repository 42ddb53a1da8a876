"""``leakage fit``: the LightningCLI over the attack, the victim data and the report.

Both doors use it: the ``leakage`` console script (:mod:`leakage.cli`) and the sweep's cells
(:mod:`leakage.sweep`).
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from .callbacks import LeakageReport

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
