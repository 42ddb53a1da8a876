"""The TensorBoard logger of a leakage run: Lightning's, without the extras that mean nothing for
an attack.

Lightning's :class:`~lightning.pytorch.loggers.TensorBoardLogger` adds two scalars of its own: an
``epoch`` (the logger connector adds it to every batch of ``self.log`` metrics; an attack has one
"epoch", so it is always 0) and ``hp_metric`` (-1 beside the hyperparameters, with an HPARAMS entry
of the raw ``__init__`` arguments, ``_instantiator`` included). :class:`TensorBoardLogger` leaves
both out: ``default_hp_metric`` is False, and ``epoch`` is dropped from the metrics it writes.
``hparams.yaml`` is still written. The run's own HPARAMS entry (its attack settings with the
outcome) is written by :class:`leakage.reporting.callbacks.LeakageReport` at the end of the attack.

Its ``version_N`` is claimed atomically: Lightning's picks the next N by listing the folder, so two
runs started at the same moment both got ``version_0`` (one run's ``metrics.csv``, both runs' event
files); this one creates the folder with ``mkdir`` (:func:`leakage.reporting.runfiles.fresh_run_dir`), and a
run that finds its N taken takes the next. On several processes only rank 0 claims; the others
learn rank 0's folder from ``trainer.log_dir`` (a broadcast), as with Lightning's.

``leakage fit`` uses it by default; a config that names Lightning's class gets this one (same
arguments).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from leakage.reporting.runfiles import fresh_run_dir

#: class paths of Lightning's logger that ``leakage fit`` runs as :class:`TensorBoardLogger`
LIGHTNING_CLASS_PATHS = (
    "lightning.pytorch.loggers.TensorBoardLogger",
    "lightning.pytorch.loggers.tensorboard.TensorBoardLogger",
    "pytorch_lightning.loggers.TensorBoardLogger",
    "pytorch_lightning.loggers.tensorboard.TensorBoardLogger",
    "TensorBoardLogger",
)
CLASS_PATH = "leakage.reporting.loggers.TensorBoardLogger"


class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's TensorBoard logger without ``epoch`` and ``hp_metric`` (same arguments)."""

    def __init__(self, save_dir: Union[str, Any], name: Optional[str] = "leakage",
                 version: Optional[Union[int, str]] = None, log_graph: bool = False,
                 default_hp_metric: bool = False, prefix: str = "", sub_dir: Optional[Union[str, Any]] = None,
                 **kwargs: Any) -> None:
        super().__init__(save_dir, name=name, version=version, log_graph=log_graph,
                         default_hp_metric=default_hp_metric, prefix=prefix, sub_dir=sub_dir, **kwargs)

    def _get_next_version(self) -> int:
        if rank_zero_only.rank != 0 or "://" in str(self.root_dir):  # another rank; a remote file system
            return super()._get_next_version()
        return int(fresh_run_dir(Path(self.root_dir), "").name[len("version_"):])

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        if metrics:
            super().log_metrics(metrics, step)
