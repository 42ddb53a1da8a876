"""The sweep's plots: one ``<name>.png`` per defense (metrics against strength) and per study."""

from __future__ import annotations

import math
from pathlib import Path

from leakage.reporting.dashboard import figure_png
from leakage.reporting.runfiles import atomic_write
from leakage.sweep.paths import confined, fmt
from leakage.sweep.tables import headers, metrics, study_headers, study_metrics, study_rows


def write_plots(out: Path, defenses: list[dict], studies: list[dict], rows: list[dict], points: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for d in defenses:
        mine = sorted((r for r in rows if r.get("defense") == d["name"] and r.get("status") == "ok"),
                      key=lambda r: r["value"])
        if not mine:
            continue
        xs = [r["value"] for r in mine]
        shown, names = metrics(mine), headers(mine)  # the kind's metrics (images: SSIM, PSNR, MSE; tables: accuracies)
        fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3))
        positive = [x for x in xs if x > 0]
        for ax, m in zip(axes, shown):
            ax.plot(xs, [r.get(m, float("nan")) for r in mine], "o-")
            ax.set_title(names[m], fontsize=9)
            ax.set_xlabel(d["param"])
            if positive and len(positive) == len(xs):
                ax.set_xscale("log")
            elif positive:  # a zero setting (no defense) on a log-like axis
                ax.set_xscale("symlog", linthresh=min(positive))
            for p in points:
                if p["defense"] == d["name"] and p.get("breaking_point") is not None:
                    ax.axvline(p["breaking_point"], color="red", ls="--", lw=0.8)
        fig.suptitle(f"{d['name']}: attack against defense strength (red: breaking point)", fontsize=9)
        fig.tight_layout()
        atomic_write(confined(out, f"{d['name']}.png"), figure_png(fig))  # closes the figure

    for s in studies:
        mine = [r for r in study_rows(rows, s) if r.get("status") == "ok"]
        if not mine:
            continue
        values = [r["value"] for r in mine]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        xs = values if numeric else list(range(len(values)))
        shown, names = study_metrics(mine), study_headers(mine)
        cols = 3 if len(shown) <= 6 else 4
        rows_ = math.ceil(len(shown) / cols)
        fig, axes = plt.subplots(rows_, cols, figsize=(10 / 3 * cols, 3 * rows_), squeeze=False)
        for ax in axes.flat[len(shown):]:
            ax.set_visible(False)
        for ax, m in zip(axes.flat, shown):
            ax.plot(xs, [r.get(m, float("nan")) for r in mine], "o-")
            ax.set_title(names[m], fontsize=9)
            ax.set_xlabel(s["label"])
            if m in ("label_acc", "image_success_rate"):
                ax.set_ylim(-0.05, 1.05)
            if numeric and all(v > 0 for v in values):
                ints = all(isinstance(v, int) for v in values)
                ax.set_xscale("log", base=2 if ints else 10)
                if ints:
                    ax.set_xticks(values, [str(v) for v in values])
                    ax.minorticks_off()
            elif not numeric:
                ax.set_xticks(xs, [fmt(v) for v in values])
        fig.suptitle(f"{s['name']}: attack against {s['key']}", fontsize=9)
        fig.tight_layout()
        atomic_write(confined(out, f"{s['name']}.png"), figure_png(fig))  # closes the figure
