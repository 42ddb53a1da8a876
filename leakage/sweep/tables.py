"""The sweep's tables, rebuilt from its cell files: the texts of ``results.csv`` and ``results.md``."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

from leakage.data.kinds import DataKind, kind_class
from leakage.sweep.paths import fmt, study_cell_id

nan = float("nan")

#: the columns every cell has besides its kind's metrics (``label_acc`` first, the rest last)
COMMON_HEADERS = {"label_acc": "label accuracy", "success_rate": "attack success rate",
                  "time_s": "time (s)", "entries_per_unknown": "gradient entries per unknown"}


def _kinds(rows: list[dict]) -> list[type[DataKind]]:
    """The kinds of the cells that ran, in order of appearance; images when none ran. A cell file
    written before cells named their kind is an image cell."""
    kinds = dict.fromkeys(kind_class(r.get("kind", "image")) for r in rows if r.get("status") == "ok")
    return list(kinds) or [kind_class("image")]


def kind_metrics(rows: list[dict]) -> list[tuple[str, str, str]]:
    """The kinds' summary metrics ``(key, header, format spec)`` (SSIM's for images, TabLeak's
    accuracies for tables; both when a study mixes kinds)."""
    return list(dict.fromkeys(m for k in _kinds(rows) for m in k.summary_metrics))


def metrics(rows: list[dict]) -> tuple[str, ...]:
    """What a defense's table and plot show: label accuracy, the kind's metrics, the success rate."""
    return ("label_acc", *(key for key, _, _ in kind_metrics(rows)), "success_rate")


def headers(rows: list[dict]) -> dict[str, str]:
    return {**COMMON_HEADERS, **{key: header for key, header, _ in kind_metrics(rows)}}


def study_metrics(rows: list[dict]) -> tuple[str, ...]:
    """What a study's table and plot show, after the swept value."""
    keys = dict.fromkeys(key for k in _kinds(rows) for key in k.headline_metrics)
    return ("label_acc", *keys, "image_success_rate", "time_s", "entries_per_unknown")


def study_headers(rows: list[dict]) -> dict[str, str]:
    scores = {k.score_name for k in _kinds(rows)}
    return {**headers(rows), **{key: f"mean {header}" for key, header, _ in kind_metrics(rows) if key in scores},
            "image_success_rate": f"{success_unit(rows)} reconstructed"}


def csv_fields(rows: list[dict]) -> tuple[str, ...]:
    return ("threat_model", "defense", "param", "study", "key", "value", "status", "victims", "failed", "success", *metrics(rows),
            "score_label", "score", "images", "image_success", "image_success_rate", "exact", "time_s", "group_time_s",
            "entries_per_unknown", "cell", "error")


def md_table(label: str, columns: list[str], rows: list[dict], cells: Callable[[dict], list[str]]) -> list[str]:
    """Markdown lines of a table: the swept value, then ``cells(row)``; a failed cell says why."""
    lines = [f"| {label} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for r in rows:
        body = cells(r) if r.get("status") == "ok" else [f"failed: {r.get('error', '')}"] + [""] * (len(columns) - 1)
        lines.append(f"| {fmt(r['value'])} | " + " | ".join(body) + " |")
    return lines + [""]


def score_label(rows: list[dict]) -> str:
    """How the cells' headline score is named (``SSIM``, ``accuracy``; both when they differ)."""
    return " / ".join(dict.fromkeys(r.get("score_label", "SSIM") for r in rows if r.get("status") == "ok")) or "SSIM"


def success_unit(rows: list[dict]) -> str:
    """What the cells' per-unit success counts: ``images`` (every image of a batch) or ``victims``."""
    return " / ".join(dict.fromkeys(r.get("success_unit", "images") for r in rows if r.get("status") == "ok")) or "images"


def defense_cells(rows: list[dict], defense: dict) -> list[dict]:
    """The defense's cells from its weakest setting to its strongest."""
    return sorted((r for r in rows if r.get("defense") == defense["name"]), key=lambda r: r["value"],
                  reverse=defense["stronger"] == "smaller")


def defense_args(defense: dict) -> str:
    """The defense's fixed arguments as ``k=v, ...`` (empty when it has none)."""
    return ", ".join(f"{k}={v}" for k, v in defense["init_args"].items())


def study_rows(rows: list[dict], study: dict) -> list[dict]:
    """The study's cells in the order of its values."""
    cells = {study_cell_id(study, v): i for i, v in enumerate(study["values"])}
    return sorted((r for r in rows if r.get("study") == study["name"] and r.get("cell") in cells),
                  key=lambda r: cells[r["cell"]])


def results_tables(cfg: dict, defenses: list[dict], studies: list[dict], rows: list[dict],
                   points: list[dict] | None) -> tuple[str, str]:
    """The texts of ``results.csv`` and ``results.md``."""
    defense_rows = sorted((r for r in rows if "defense" in r), key=lambda r: (r["defense"], r["value"]))
    order = {study_cell_id(s, v): (i, j) for i, s in enumerate(studies) for j, v in enumerate(s["values"])}
    by_study = sorted((r for r in rows if "study" in r),
                      key=lambda r: (*order.get(r["cell"], (len(order), 0)), r["cell"]))
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=list(csv_fields(rows)), extrasaction="ignore")
    w.writeheader()
    for r in defense_rows + by_study:
        w.writerow(r)
    md = [f"Attack success: {score_label(rows)} >= {cfg['success_ssim']}" +
          (f"; a defense holds at a success rate <= {float(cfg['target_success']):.0%}." if defenses
           else "."), ""]
    for d in defenses:
        mine = defense_cells(rows, d)
        if not mine:
            continue
        desc = defense_args(d)
        md.append(f"### {d['name']} ({d['class_path'].rsplit('.', 1)[-1]}{', ' + desc if desc else ''})")
        md.append("")
        shown = kind_metrics(mine)
        md += md_table(d["param"], [headers(mine)[m] for m in metrics(mine)], mine, lambda r: [
            f"{100 * r['label_acc']:.0f}%", *(format(r.get(key, nan), spec) for key, _, spec in shown),
            f"{100 * r['success_rate']:.0f}% ({r['success']}/{r['victims']})"])
    for s in studies:
        mine = study_rows(rows, s)
        if not mine:
            continue
        md.append(f"### {s['name']} ({s['key']})")
        md.append("")
        label = score_label(mine)
        specs = {key: spec for key, _, spec in kind_metrics(mine)}
        shown = study_metrics(mine)[1:-3]  # the kind's metrics
        columns = ["label accuracy", *(study_headers(mine)[m] for m in shown),
                   f"{success_unit(mine)} with {label} >= {cfg['success_ssim']}",
                   "client updates", "time (s)", "gradient entries per unknown"]
        md += md_table(s["label"], columns, mine, lambda r: [
            f"{100 * r['label_acc']:.0f}%", *(format(r.get(m, nan), specs[m]) for m in shown),
            f"{100 * r['image_success_rate']:.0f}% ({r['image_success']}/{r['images']})", str(r["victims"]),
            f"{r['time_s']:.1f}", f"{r['entries_per_unknown']:.2f}"])
        ok = [r for r in mine if r.get("status") == "ok"]
        setup = [f"{what}: {', '.join(dict.fromkeys(str(r[what]) for r in ok))}"
                 for what in ("dataset", "model") if any(what in r for r in ok)]
        if setup:
            md.append("; ".join(setup) + f"; success: {label} >= {cfg['success_ssim']}.")
            md.append("")
    if points:
        md.append("### Breaking points")
        md.append("")
        for p in points:
            md.append(f"- {p['defense']}: {p['note']}" +
                      (f" (resolution {p['resolution']:.3g})" if p.get("resolution") is not None else ""))
        md.append("")
    return table.getvalue(), "\n".join(md)
