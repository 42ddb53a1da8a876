"""A run's report as files: the plain-text table of its victims, ``report.html``, and the run
folder's artifacts (``metrics.csv``, ``metrics.txt``, ``metrics.json``, ``schema.json``,
``gallery.png``, ``history.png``) written atomically by the rule of :mod:`leakage.reporting.runfiles`.
:class:`leakage.reporting.callbacks.LeakageReport` gathers what they show; nothing here reads the
secret."""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path
from typing import Any, Optional

from leakage.data.kinds import DataKind, ImageKind
from leakage.federated.server import HONEST
from leakage.records import TEXT_COLUMNS, row_columns
from leakage.reporting import htmlreport
from leakage.reporting.runfiles import RECONSTRUCTIONS, Artifacts, json_text, mark_ended
from leakage.reporting.views import view_of


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the per-victim results."""
    shown = ("victim", "indices", "true_labels", "recovered_labels", "ssim", "psnr", "mse", "grad_l2", "status")
    if any("accuracy" in r for r in rows):  # tables
        shown = ("victim", "indices", "true_labels", "recovered_labels", "accuracy", "accuracy_categorical",
                 "accuracy_continuous", "grad_l2", "status")
    if any("rouge1" in r for r in rows):  # text
        shown = ("victim", "indices", "true_labels", "recovered_labels", *TEXT_COLUMNS, "grad_l2", "status")

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else (f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.3f}")
        if isinstance(v, list):
            return ",".join(str(i) for i in v)
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in shown] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(shown)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(shown, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def run_text(attack, rows: list[dict], summary: dict, success_ssim: float, kind: DataKind, defenses: list[dict],
             data_name: Optional[str] = None, details: str = "", partial: Optional[str] = None,
             unscored: Optional[str] = None) -> str:
    """The run's plain-text report (printed, and ``metrics.txt``): the threat model first; whether the
    run is partial, the ``attack`` (its module) and its data (``data_name``: the user's data by name, a
    CSV run's file), the client-side ``defenses``; the per-victim table, the outcome (or why there is
    none), the kind's ``details``, and what the attack says of exactness, its notes and failures."""
    s = summary
    # the threat model first; then whether the run is partial, who attacked, with which defenses
    lines = [f"threat model: {attack.observation.threat_model}"]
    lines += [f"partial run: {partial}; the table holds each victim's best so far"] if partial else []
    lines += [f"attack: {attack.describe()}"]
    lines += [f"data: {data_name}"] if data_name else []
    lines += [f"defense {i + 1}: {d['defense']} " + ", ".join(f"{k}={v}" for k, v in d.items() if k != "defense")
             for i, d in enumerate(defenses)]
    text = "\n".join([*lines, format_table(rows)])
    if f"{kind.score_name}_mean" in s:  # the victims' data is known: the kind's outcome
        text += "\n" + view_of(kind).outcome(s, success_ssim)
    elif unscored:
        text += f"\nnot scored: {unscored}"
    else:
        text += f"\nno victim {kind.records} (attacking captured gradients): mean gradient L2 {s['grad_l2_mean']:.3g}"
    if details:
        text += "\n" + details
    text += f"\ngradient entries per unknown input value: {s['entries_per_unknown']:.2f}"
    if s["exact"]:
        proof = getattr(attack, "certificate", None) or "certified by the update"
        text += f"\nexact ({proof}): {s['exact']}/{s['victims']} victims"
    for note in getattr(attack, "notes", None) or []:
        text += f"\n{note}"
    if s["failed"]:
        why = ("numerically (every restart's matching loss or gradient became NaN or infinite) or as noted above"
               if getattr(attack, "notes", None) else
               "numerically: every restart's matching loss or gradient became NaN or infinite")
        text += f"\n{s['failed']} of {s['victims']} victims failed {why} (status 'failed')"
    return text


def write_run_files(run_dir: Path, rows: list[dict], summary: dict, success_ssim: float, text: str,
                    gallery: Optional[bytes], history: Optional[bytes], settings: dict, defenses: list[dict],
                    kind: DataKind, partial: Optional[str], step: int, details_html: str = "",
                    unscored: Optional[str] = None, unsaved: Optional[str] = None) -> list[str]:
    """The run's files, each atomically; ``metrics.json`` (which says complete or partial, ``partial``
    the reason, at ``step``) last, then the RUNNING marker goes. What cannot be written is said in one
    line on stderr (with ``unsaved``, why the reconstructions could not be saved, and ``unscored``, why
    they could not be scored) and returned: the files not written."""
    s = summary
    files = Artifacts(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        files.unwritten, files.reason = ["the run folder"], err.strerror or str(err)
    if not files.unwritten:
        table = io.StringIO(newline="")
        w = csv.DictWriter(table, fieldnames=row_columns(kind, rows))  # the kind's own columns, no other's
        w.writeheader()
        for r in rows:
            w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
        files.write("metrics.csv", table.getvalue())
        files.write("metrics.txt", text + "\n")
        # the public description of the data (a table's schema): what a later attack on a captured update needs
        files.write("schema.json", json_text(kind.describe(), indent=2) + "\n")
        if gallery is not None:
            files.write("gallery.png", gallery)
        if history is not None:
            files.write("history.png", history)
        files.write("report.html", fit_report(rows, s, success_ssim, settings, defenses, gallery, history, run_dir,
                                              details_html, kind, unscored))
        status = {"status": "complete"} if partial is None else {"status": "partial", "reason": partial, "step": step}
        # strict JSON: a metric with nothing to measure (NaN) is null
        files.write("metrics.json", json_text({**status, "summary": s, "success_ssim": success_ssim,
                                               "defenses": defenses, "victims": rows}, indent=2, default=float))
        if "metrics.json" not in files.unwritten:  # else the folder holds no result: it stays RUNNING
            mark_ended(run_dir)
    if unsaved:
        files.unwritten.insert(0, RECONSTRUCTIONS)
        files.reason = files.reason or unsaved
    line = files.failure_line()
    if line:
        print(f"leakage: error: {line}", file=sys.stderr, flush=True)
    if unscored:
        print(f"leakage: error: {unscored}", file=sys.stderr, flush=True)
    return files.unwritten


def fit_report(rows: list[dict], summary: dict, success_ssim: float, settings: dict[str, Any],
               defenses: list[dict], gallery: Optional[bytes], history: Optional[bytes], run_dir: Path,
               details: str = "", kind=None, unscored: Optional[str] = None) -> str:
    """The run's ``report.html``: outcome, settings, defenses, gallery, history and per-victim table
    (the ``kind``'s per-victim scalars, default images: SSIM, PSNR, MSE)."""
    h = htmlreport
    s = summary
    kind = kind if kind is not None else ImageKind()
    scored = f"{kind.score_name}_mean" in s  # the victims' data is known
    if scored:
        outcome = view_of(kind).outcome(s, success_ssim, "html")
    elif unscored:
        outcome = f"Not scored: {h.esc(unscored)}; {s['failed']} numerically failed."
    else:
        outcome = (f"No victim {kind.records} (captured gradients): mean gradient L2 distance "
                   f"{h.esc(h.fmt(s['grad_l2_mean']))}; {s['failed']} numerically failed.")
    title = f"Gradient inversion: {settings.get('dataset', 'captured gradients')}, {settings.get('model', '')}"
    body = [f'<p class="outcome">{outcome}</p>', "<h2>Settings</h2>", h.settings_list(settings)]
    if defenses:
        body += ["<h3>Client-side defenses, in order</h3>", "<ol>" + "".join(
            f"<li>{h.esc(d['defense'])}: " + h.esc(", ".join(f"{k} = {h.fmt(v)}" for k, v in d.items() if k != "defense"))
            + "</li>" for d in defenses) + "</ol>"]
    if gallery is not None or details:
        body.append(f"<h2>{h.esc(view_of(kind).figure_heading)}</h2>")
        if gallery is not None:
            body.append(h.image(gallery, view_of(kind).figure_alt, view_of(kind).figure_caption))
        if details:
            body.append(details)
    if history is not None:
        body += ["<h2>Matching loss over the attack</h2>", h.image(
            history, "matching loss history", "Gradient-matching loss of every victim's best restart, log scale.")]
    body.append("<h2>Per victim</h2>")
    scalars = kind.scalar_headers()
    headers = ["victim", "indices", "true labels", "recovered labels", "label acc", *scalars.values(),
               "grad L2", "grad cosine", "final loss", "restart", "status"]
    table_rows, classes = [], []
    for r in rows:
        if r["status"] == "failed":
            status, cls = "failed numerically", "failed"
        elif scored:
            status, cls = ("reconstructed", "") if r[kind.score_name] >= success_ssim else ("not reconstructed", "bad")
        else:
            status, cls = "ok", ""
        table_rows.append([r["victim"], r["indices"], r["true_labels"], r["recovered_labels"], r["label_acc"],
                           *(r.get(key, float("nan")) for key in scalars), r["grad_l2"], r["grad_cosine"],
                           r["final_loss"], r["best_restart"], status])
        classes.append(cls)
    body.append(h.table(headers, table_rows, classes, text_columns=(len(headers) - 1,)))
    body.append(f'<p class="meta">Run folder: {h.esc(run_dir)} (metrics.csv, metrics.json, gallery.png, '
                "history.png, TensorBoard events, config.yaml).</p>")
    return h.page(title, body, settings.get("threat_model", HONEST), kind.records)
