"""The TensorBoard HPARAMS view of a sweep: one row per completed cell, under ``output/hparams``.

TensorBoard's HPARAMS tab takes its columns from one experiment summary in the whole log folder,
so the sweep writes exactly one (in the ``hparams`` run: every column any cell has), and one
session per cell (``hparams/<cell>``: its defense and strength, or study and value, and its
outcome as ``hparam/*`` scalars). The cells' own fit runs under ``runs/`` write no HPARAMS entry
(their report's ``hparams`` is off), so ``tensorboard --logdir <output>`` shows the sweep's rows.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from leakage.sweep.paths import confined
from leakage.sweep.tables import metrics as shown_metrics


def outcomes(rows: list[dict]) -> tuple[str, ...]:
    """The outcome columns, ``hparam/<name>`` scalars in each cell's session: the attack's success
    first, then the cells' kind's metrics (images: SSIM, PSNR, MSE; tables: TabLeak's accuracies)."""
    return ("success_rate", "success", *(m for m in shown_metrics(rows) if m != "success_rate"), "image_success_rate",
            "time_s", "entries_per_unknown")


def cell_hparams(row: dict) -> dict[str, Any]:
    """A cell's settings as HPARAMS columns."""
    if "study" in row:
        out: dict[str, Any] = {"study": row["study"], "key": row["key"], "value": row["value"]}
    else:
        out = {"defense": row["defense"], "param": row["param"], "strength": row["value"]}
    for key in ("dataset", "model"):
        if key in row:
            out[key] = row[key]
    return out


def write_hparams(out: Path, rows: list[dict]) -> None:
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    tb_dir = confined(out, "hparams")
    if tb_dir.exists():
        shutil.rmtree(tb_dir)
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return
    cells = [cell_hparams(r) for r in ok]
    # one type per column: a study's values are numbers, or else all shown as text
    for key in ("value",):
        values = [c[key] for c in cells if key in c]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            for c in cells:
                if key in c:
                    c[key] = str(c[key]).lower() if isinstance(c[key], bool) else str(c[key])
    for c in cells:
        for k, v in c.items():
            if not isinstance(v, (bool, int, float, str)):
                c[k] = str(v)
    names = outcomes(ok)
    metrics = {f"hparam/{m}": 0.0 for m in names}
    columns: dict[str, Any] = {}
    for c in cells:
        for k, v in c.items():
            columns.setdefault(k, v)
    experiment, _, _ = hparams(columns, metrics)
    with SummaryWriter(str(tb_dir)) as w:
        w._get_file_writer().add_summary(experiment)
    for r, c in zip(ok, cells):
        _, start, end = hparams(c, metrics)
        with SummaryWriter(str(confined(out, "hparams", r["cell"]))) as w:
            fw = w._get_file_writer()
            fw.add_summary(start)
            fw.add_summary(end)
            for m in names:
                if isinstance(r.get(m), (int, float)):
                    w.add_scalar(f"hparam/{m}", float(r[m]), 0)
