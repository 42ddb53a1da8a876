"""``report.html``: one self-contained page per run and per sweep, to open offline, share and print.

Plain HTML and CSS, images embedded as base64 PNGs, nothing fetched from anywhere. The fit's page
is written by :class:`leakage.reporting.callbacks.LeakageReport`, the sweep's by :mod:`leakage.sweep.report`.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from leakage.federated.server import HONEST, PUBLIC_LABELS

THREAT_MODEL = (
    "An honest-but-curious server knows the model architecture and its current weights, receives a "
    "client's shared update (the gradient of its loss, averaged over its batch, after any client-side "
    "defenses) and public metadata (input shape, number of classes, batch size), and reconstructs the "
    "client's private {records} and labels from that alone; the victims' {records} are read only to score "
    "the reconstructions."
)
MALICIOUS_THREAT_MODEL = (
    "A malicious server changed the model it sent (named in the first line) before the clients computed "
    "their updates; the clients trained the changed model. The server knows its change, the model and its "
    "weights, receives a client's shared update (after any client-side defenses) and public metadata, and "
    "reconstructs the client's private {records} and labels from that alone; the victims' {records} are read "
    "only to score the reconstructions."
)
LABELS_KNOWN = " The victims' labels are public metadata here (TabLeak's setting): the server is given them."


CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; font-size: 11pt; color: #111;
       max-width: 60em; margin: 1.5em auto; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.4em;
     border-bottom: 1px solid #999; } h3 { font-size: 1em; }
p.meta { color: #555; font-size: 0.9em; margin-top: 0; }
p.outcome { font-size: 1.1em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.15em 0.5em; text-align: right; }
th { background: #eee; } td.text, th.text { text-align: left; }
tr.bad td { color: #b00; } tr.failed td { color: #b00; font-weight: bold; }
figure { margin: 0.8em 0; page-break-inside: avoid; break-inside: avoid; }
figure img { max-width: 100%; height: auto; } figcaption { font-size: 0.9em; color: #333; }
dl.settings { display: grid; grid-template-columns: max-content auto; gap: 0.1em 1em; font-size: 0.9em; }
dl.settings dt { font-weight: bold; } dl.settings dd { margin: 0; }
@media print { body { max-width: none; margin: 0; font-size: 10pt; } h2 { page-break-after: avoid; }
               table, tr { page-break-inside: avoid; } }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A number as the tables show it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def image(png: bytes, alt: str, caption: str = "") -> str:
    """An embedded PNG (a ``data:`` URI) in a figure."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], row_classes: Iterable[str] | None = None,
          text_columns: Sequence[int] = ()) -> str:
    """An HTML table; ``row_classes`` marks rows (``bad``, ``failed``), ``text_columns`` align left."""
    def cell(tag: str, i: int, v: Any) -> str:
        cls = ' class="text"' if i in text_columns else ""
        return f"<{tag}{cls}>{esc(fmt(v))}</{tag}>"

    head = "<tr>" + "".join(cell("th", i, h) for i, h in enumerate(headers)) + "</tr>"
    classes = list(row_classes) if row_classes is not None else None
    body = []
    for j, row in enumerate(rows):
        cls = f' class="{esc(classes[j])}"' if classes and classes[j] else ""
        body.append(f"<tr{cls}>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    return f"<table>\n<thead>{head}</thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def setting(value: Any) -> str:
    """A setting as it was given: 1.0 as 1, 0.001 as 0.001, lists joined."""
    if isinstance(value, float):
        return f"{value:g}"
    return fmt(value)


def settings_list(settings: dict[str, Any]) -> str:
    return '<dl class="settings">' + "".join(
        f"<dt>{esc(k)}</dt><dd>{esc(setting(v))}</dd>" for k, v in settings.items()) + "</dl>"


def page(title: str, body: Sequence[str], threat_model: str = HONEST, records: str = "images") -> str:
    """A whole page: the threat model in its first line (``threat_model``: who attacked, as
    :attr:`leakage.records.Observation.threat_model` says it), the title, the time it was written, what
    the threat model means for the data (``records``: what the client holds, as the kind names it,
    ``images`` or ``records``), then ``body``."""
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    who = threat_model[:-len(PUBLIC_LABELS)] if threat_model.endswith(PUBLIC_LABELS) else threat_model
    meaning = (THREAT_MODEL if who == HONEST else MALICIOUS_THREAT_MODEL).format(records=records)
    if who != threat_model:
        meaning += LABELS_KNOWN
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{esc(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        f'<p class="threat-line"><b>Threat model: {esc(threat_model)}.</b></p>',
        f"<h1>{esc(title)}</h1>", f'<p class="meta">written by leakage on {esc(when)}</p>',
        f'<p class="threat"><b>Threat model.</b> {esc(meaning)}</p>',
        *body, "</body>", "</html>", ""])


def write(path: Path, text: str) -> None:
    """Write the page so that a reader sees the old file or the new one, never a part."""
    from leakage.reporting.runfiles import atomic_write

    atomic_write(path, text)
