"""How each kind shows a reconstruction: the figure (images: the gallery; tables: per-feature
accuracy as a bar chart) and, for tables, the rows of truth against reconstruction with wrong
cells marked and the entropy of every reconstructed cell (text, Markdown for TensorBoard, HTML)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from .. import htmlreport as h
from .tabular import entropy_text
from ..dashboard import _plt, figure_png


def feature_accuracy_png(names: Sequence[str], accuracy: Tensor, types: Sequence[str], title: str = "") -> bytes:
    """Mean accuracy of every feature over the victims' rows, as a bar chart."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(names) + 1.5), 3.2))
    colors = ["#0969da" if t == "categorical" else "#bf8700" for t in types]
    ax.bar(range(len(names)), [100 * float(a) for a in accuracy], color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "per-feature accuracy (blue: categorical, ochre: continuous)", fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def row_table(schema, recon: Tensor, truth: Optional[Tensor], metrics: Optional[dict], v: int,
              entropy: Optional[Tensor] = None) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Victim ``v``'s rows: headers, cells (a true row, then its reconstruction) and which cells
    are wrong. Without the truth only the reconstruction's rows."""
    names = [f.name for f in schema.features]
    rec_rows = schema.decode(recon[v])
    if truth is None or metrics is None:
        return ["row"] + names, [[f"rec {i}"] + [_cell(c) for c in r] for i, r in enumerate(rec_rows)], \
            [[False] * (len(names) + 1) for _ in rec_rows]
    true_rows = schema.decode(truth[v])
    perm, correct = metrics["perm"][v], metrics["correct"][v]
    ent = metrics.get("entropy")
    cells, wrong = [], []
    for i, t in enumerate(true_rows):
        cells.append([f"true {i}"] + [_cell(c) for c in t])
        wrong.append([False] * (len(names) + 1))
        r = rec_rows[int(perm[i])]
        marks = []
        for j, c in enumerate(r):
            e = "" if ent is None else entropy_text(float(ent[v, i, j]))
            e = f" (H {e})" if e else ""
            marks.append(_cell(c) + e)
        cells.append([f"rec {i}"] + marks)
        wrong.append([False] + [bool(correct[i, j] < 0.5) for j in range(len(names))])
    return ["row"] + names, cells, wrong


def rows_text(headers, cells, wrong) -> str:
    """Plain text; a wrong cell ends in ``*``."""
    shown = [[c + ("*" if w else "") for c, w in zip(row, ws)] for row, ws in zip(cells, wrong)]
    widths = [max(len(hd), *(len(r[i]) for r in shown)) for i, hd in enumerate(headers)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in shown]
    return "\n".join(lines)


def rows_markdown(headers, cells, wrong) -> str:
    """A Markdown table (TensorBoard text); a wrong cell is bold and struck through."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row, ws in zip(cells, wrong):
        out.append("| " + " | ".join(f"**~~{c}~~**" if w else c for c, w in zip(row, ws)) + " |")
    return "\n".join(out)


def rows_html(headers, cells, wrong) -> str:
    """An HTML table; a wrong cell is marked (red)."""
    head = "<tr>" + "".join(f"<th>{h.esc(x)}</th>" for x in headers) + "</tr>"
    body = []
    for row, ws in zip(cells, wrong):
        wrong_style = ' style="color:#cf222e;font-weight:bold"'
        tds = "".join(f'<td class="text"{wrong_style if w else ""}>{h.esc(c)}</td>' for c, w in zip(row, ws))
        body.append(f"<tr>{tds}</tr>")
    return f"<table>\n<thead>{head}</thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"
