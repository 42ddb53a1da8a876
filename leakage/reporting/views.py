"""How each kind shows a reconstruction: the outcome line, the figure (images: the gallery; tables:
per-feature accuracy as a bar chart) and, for tables, the rows of truth against reconstruction with
wrong cells marked and the entropy of every reconstructed cell (text, Markdown for TensorBoard, HTML).

A kind describes its data (:mod:`leakage.data.kinds`); its view here draws it: :func:`view_of` gives
the view of a kind, the report's pages, cards and printed lines call it and never branch on the kind."""

from __future__ import annotations

import math

from typing import Any, Optional, Sequence

from torch import Tensor

from leakage.reporting import htmlreport as h
from leakage.data.kinds.base import DataKind
from leakage.data.kinds.image import ImageKind
from leakage.data.kinds.tabular import ENTROPY_NOTE, TOLERANCE, TabularKind, entropy_text
from leakage.data.kinds.text import TextKind
from leakage.federated.server import HONEST
from leakage.reporting.textview import TextView
from leakage.reporting.dashboard import _plt, figure_png, gallery_png


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


class KindView:
    """How the report shows a kind's reconstructions (the default: a score line, no figure, no details)."""

    def __init__(self, kind: DataKind) -> None:
        self.kind = kind

    #: the report's heading, alt text and caption of :meth:`figure`
    figure_heading: str = "Reconstructions"

    figure_alt: str = "reconstructions"

    figure_caption: str = ""

    def outcome(self, summary: dict, success: float, style: str = "text") -> str:
        """The outcome of a summary (:func:`leakage.records.summarize`) of victims whose data is
        known, as ``text`` (printed, one or two lines), ``markdown`` (TensorBoard's summary card) or
        ``html`` (report.html)."""
        s = summary
        if style == "text":
            return (f"reconstructed ({self.kind.score_label} >= {success}): {s['success']}/{s['victims']}  mean "
                    f"{self.kind.score_label} {s[f'{self.kind.score_name}_mean']:.3f}  label accuracy {100 * s['label_acc']:.1f}%  "
                    f"failed {s['failed']}")
        ge = "&ge;" if style == "html" else ">="
        bold = ("<b>", "</b>") if style == "html" else ("**", "**")
        return (f"{bold[0]}{s['success']}/{s['victims']} victims reconstructed{bold[1]} ({self.kind.score_label} {ge} "
                f"{success:g}); mean {self.kind.score_label} {s[f'{self.kind.score_name}_mean']:.3f}, label accuracy "
                f"{100 * s['label_acc']:.1f}%, numerically failed {s['failed']}.")

    def figure(self, recon: Tensor, labels: Tensor, *, truth: Optional[Tensor], true_labels: Optional[Tensor],
               indices: Optional[list], metrics: Optional[dict], failed: list[bool], success: float,
               title: str) -> Optional[bytes]:
        """The run's figure (``gallery.png``, TensorBoard ``gallery``) as PNG bytes, or None."""
        return None

    def details(self, recon: Tensor, truth: Optional[Tensor], metrics: Optional[dict]) -> dict[str, str]:
        """Extra views of the reconstructions: ``text`` (printed, metrics.txt), ``markdown``
        (TensorBoard) and ``html`` (report.html); empty strings when the kind has none."""
        return {"text": "", "markdown": "", "html": ""}


class ImageView(KindView):
    """Images: the outcome with SSIM and PSNR, the gallery of victims and reconstructions."""

    figure_heading = "Reconstructions"
    figure_alt = "gallery of victims and reconstructions"
    figure_caption = ("Victim images (top, with dataset index and label) and their reconstructions (below, with the "
                      "recovered label and SSIM; green: reconstructed, red: not reconstructed or failed).")

    def outcome(self, summary: dict, success: float, style: str = "text") -> str:
        s = summary
        if style == "text":
            psnr = "n/a" if math.isnan(s["psnr_mean"]) else f"{s['psnr_mean']:.2f} dB"
            text = (f"reconstructed (SSIM >= {success}): {s['success']}/{s['victims']}  mean SSIM {s['ssim_mean']:.3f}  "
                    f"mean PSNR {psnr}  label accuracy {100 * s['label_acc']:.1f}%  failed {s['failed']}")
            if s["images"] > s["victims"]:
                text += f"\nimages reconstructed (SSIM >= {success}): {s['image_success']}/{s['images']}"
            return text
        if style == "markdown":
            return (f"**{s['success']}/{s['victims']} victims reconstructed** (SSIM >= {success:g}); "
                    f"mean SSIM {s['ssim_mean']:.3f}, mean PSNR {h.fmt(s['psnr_mean'])} dB, "
                    f"label accuracy {100 * s['label_acc']:.1f}%, numerically failed {s['failed']}.")
        text = (f"<b>{s['success']}/{s['victims']} victims reconstructed</b> (SSIM &ge; {success:g}); "
                f"mean SSIM {s['ssim_mean']:.3f}, mean PSNR {h.esc(h.fmt(s['psnr_mean']))} dB, label accuracy "
                f"{100 * s['label_acc']:.1f}%, {s['failed']} numerically failed.")
        if s["images"] > s["victims"]:
            text += f" Images reconstructed: {s['image_success']}/{s['images']}."
        return text

    def figure(self, recon, labels, *, truth, true_labels, indices, metrics, failed, success, title):
        return gallery_png(recon, labels, truth=truth, true_labels=true_labels, indices=indices,
                           ssim_images=metrics["ssim_images"] if metrics is not None else None,
                           perm=metrics["perm"] if metrics is not None else None, failed=failed,
                           success_ssim=success, title=title)


class TableView(KindView):
    """Tables: TabLeak's accuracy, the per-feature bar chart, the rows of truth against reconstruction."""

    figure_heading = "Records"
    figure_alt = "per-feature accuracy"
    figure_caption = "TabLeak's accuracy of every feature over the victims' records."

    def outcome(self, summary: dict, success: float, style: str = "text") -> str:
        s = summary
        if style == "text":
            return (f"records' accuracy (TabLeak's): {100 * s['accuracy_mean']:.1f}%  label accuracy "
                    f"{100 * s['label_acc']:.1f}%  failed {s['failed']}")
        if style == "markdown":
            return (f"**records reconstructed with {100 * s['accuracy_mean']:.1f}% accuracy** (TabLeak's); "
                    f"{s['success']}/{s['victims']} victims at accuracy >= {success:g}; "
                    f"label accuracy {100 * s['label_acc']:.1f}%, numerically failed {s['failed']}.")
        return (f"<b>records reconstructed with {100 * s['accuracy_mean']:.1f}% accuracy</b> (TabLeak's: categorical "
                f"exact, continuous within {TOLERANCE} standard deviations); {s['success']}/{s['victims']} victims at "
                f"accuracy &ge; {success:g}; label accuracy {100 * s['label_acc']:.1f}%, "
                f"{s['failed']} numerically failed.")

    def figure(self, recon, labels, *, truth, true_labels, indices, metrics, failed, success, title):
        if metrics is None:
            return None
        feats = self.kind.schema.features
        return feature_accuracy_png([f.name for f in feats], metrics["feature_accuracy"].mean(0),
                                    [f.type for f in feats], title=f"{title}: per-feature accuracy" if title else "")

    def details(self, recon: Tensor, truth: Optional[Tensor], metrics: Optional[dict]) -> dict[str, str]:
        """Per feature: accuracy and mean entropy; per victim: its rows, truth against reconstruction."""
        text, md, html = [], [], []
        if metrics is not None:
            acc = metrics["feature_accuracy"].mean(0)
            ent = metrics.get("entropy")
            if ent is None:
                lines = ["feature            type         accuracy"]
            else:  # the two scales in two columns (combine): a categorical and a continuous H never side by side
                lines = ["feature            type         accuracy  H cat (0-1)  H cont (nats)"]
            for j, f in enumerate(self.kind.schema.features):
                line = f"{f.name:<18} {f.type:<12} {100 * float(acc[j]):7.1f}%"
                if ent is not None:
                    e = entropy_text(float(ent[..., j].nanmean()))
                    line += f"  {e:>11}  {'':>13}" if f.type == "categorical" else f"  {'':>11}  {e:>13}"
                lines.append(line.rstrip())
            lines.append(ENTROPY_NOTE if ent is not None else
                         "no entropy: it measures how the pooled restarts disagree (ensemble='pool' with restarts > 1); "
                         "this attack did not pool restarts")
            lines.append(f"overall accuracy {100 * float(metrics['accuracy'].mean()):.1f}%  (categorical "
                         f"{100 * float(metrics['accuracy_categorical'].mean()):.1f}%, continuous "
                         f"{100 * float(metrics['accuracy_continuous'].mean()):.1f}%; a continuous value counts "
                         f"within {TOLERANCE} x its standard deviation)")
            text.append("\n".join(lines))
            html.append("<pre>" + "\n".join(lines).replace("&", "&amp;").replace("<", "&lt;") + "</pre>")
        pooled = metrics is not None and metrics.get("entropy") is not None
        if pooled:
            md.append(f"H: {ENTROPY_NOTE}.")
        for v in range(recon.shape[0]):
            table = row_table(self.kind.schema, recon, truth, metrics, v)
            legend = "wrong cells end in *" + ("; H: the cell's entropy, scales above" if pooled else "")
            text.append(f"victim {v} ({legend})\n" + rows_text(*table))
            md.append(f"**victim {v}**\n\n" + rows_markdown(*table))
            html.append(f"<h3>Victim {v}</h3>" + rows_html(*table))
        return {"text": "\n".join(text), "markdown": "\n\n".join(md), "html": "\n".join(html)}


#: the view of each kind (a kind's subclasses share its view)
VIEWS: dict[type, type] = {ImageKind: ImageView, TabularKind: TableView, TextKind: TextView}


def view_of(kind: DataKind) -> KindView:
    """The view that draws ``kind``'s reconstructions."""
    for cls in type(kind).__mro__:
        if cls in VIEWS:
            return VIEWS[cls](kind)
    return KindView(kind)


def summary_markdown(rows: list[dict], summary: dict, success_ssim: float, settings: dict[str, Any], kind=None) -> str:
    """The summary card: the threat model (its first line), outcome, settings and the per-victim
    table (the ``kind``'s headline metrics, default images: SSIM, PSNR), as Markdown."""
    kind = kind if kind is not None else ImageKind()
    scored = f"{kind.score_name}_mean" in summary  # the victims' data is known
    lines = [f"**Threat model: {settings.get('threat_model', HONEST)}.**", ""]
    if scored:
        lines.append(view_of(kind).outcome(summary, success_ssim, "markdown"))
    else:
        lines.append(f"No victim {kind.records} (captured gradients): mean gradient L2 distance {h.fmt(summary['grad_l2_mean'])}; "
                     f"numerically failed {summary['failed']}.")
    lines += ["", "Settings: " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {h.fmt(v)}"
                                           for k, v in settings.items() if k != "threat_model"), ""]
    cols = ("victim", "indices", "true_labels", "recovered_labels", *kind.headline_metrics, "final_loss", "status")
    lines.append("| " + " | ".join(c.replace("_", " ") for c in cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in rows:
        status = r["status"] if r["status"] == "failed" or not scored else (
            "reconstructed" if r[kind.score_name] >= success_ssim else "not reconstructed")
        lines.append("| " + " | ".join(status if c == "status" else h.fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)
