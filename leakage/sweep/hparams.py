"""The TensorBoard hparams view of a sweep: one run per completed cell, under ``output/hparams``."""

from __future__ import annotations

import shutil
from pathlib import Path

from .paths import confined
from .tables import METRICS


def write_hparams(out: Path, rows: list[dict]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    tb_dir = confined(out, "hparams")
    if tb_dir.exists():
        shutil.rmtree(tb_dir)
    with SummaryWriter(str(tb_dir)) as w:
        for r in rows:
            if r.get("status") != "ok":
                continue
            if "study" in r:
                v = r["value"]
                hparams = {"study": r["study"], "value": v if isinstance(v, (bool, int, float, str)) else str(v)}
            else:
                hparams = {"defense": r["defense"], "strength": r["value"]}
            metrics = {f"hparam/{m}": r[m] for m in (*METRICS, "image_success_rate", "time_s", "entries_per_unknown")
                       if isinstance(r.get(m), (int, float))}
            confined(out, "hparams", r["cell"])  # the run's folder: a plain name inside the output
            w.add_hparams(hparams, metrics, run_name=r["cell"])
