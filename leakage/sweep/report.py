"""The sweep's ``report.html``: one self-contained page with the attack, every defense's curves and
breaking point, every study's table and plot, and links to each cell's own ``report.html``.

Rebuilt from the cell files with the tables, after every cell; the breaking points appear once the
search is done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leakage.data.kinds import kind_class
from leakage.reporting import htmlreport as h
from leakage.federated.server import PUBLIC_LABELS, server_from_config
from leakage.sweep.paths import confined, fmt
from leakage.sweep.tables import (defense_args, defense_cells, headers, metrics, score_label, study_headers, study_metrics,
                     study_rows)


def _attack_settings(base: dict) -> dict[str, Any]:
    """What every cell shares: the fit config's model, data and step budget."""
    out: dict[str, Any] = {}
    trainer = base.get("trainer") if isinstance(base.get("trainer"), dict) else {}
    if "max_steps" in trainer:
        out["steps"] = trainer["max_steps"]
    for section in ("model", "data"):
        part = base.get(section)
        if isinstance(part, dict):
            for k, v in part.items():
                if isinstance(v, (str, int, float, bool)) or (isinstance(v, list) and len(v) <= 20):
                    out[f"{section}.{k}"] = v
    return out


def _value(r: dict, m: str) -> Any:
    v = r.get(m)
    if m in ("label_acc", "success_rate", "image_success_rate") and isinstance(v, (int, float)):
        return f"{100 * v:.0f}%"
    return v


def _cell_link(out: Path, r: dict) -> str:
    page = confined(out, "runs", r["cell"]) / "report.html"
    if r.get("status") != "ok" or not page.exists():
        return h.esc(r.get("error", r.get("status", "")))
    return f'<a href="runs/{h.esc(r["cell"])}/report.html">{h.esc(r["cell"])}</a>'


def _table(out: Path, label: str, headers: dict, metrics: tuple, rows: list[dict], extra=None) -> str:
    head = "".join(f"<th>{h.esc(x)}</th>" for x in [label, *(headers[m] for m in metrics), *(extra or [])])
    body = []
    for r in rows:
        if r.get("status") != "ok":
            cells = f'<td class="text" colspan="{len(metrics) + len(extra or [])}">failed: {h.esc(r.get("error", ""))}</td>'
            body.append(f'<tr class="failed"><td>{h.esc(fmt(r["value"]))}</td>{cells}</tr>')
            continue
        cells = "".join(f"<td>{h.esc(h.fmt(_value(r, m)))}</td>" for m in metrics)
        if extra:
            cells += f'<td>{r["success"]}/{r["victims"]}</td><td class="text">{_cell_link(out, r)}</td>'
        body.append(f"<tr><td>{h.esc(fmt(r['value']))}</td>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>"


#: the fit options that set the threat model
SERVER_KEYS = ("data.server",)


def _plot(out: Path, name: str, caption: str) -> str:
    path = confined(out, f"{name}.png")
    return h.image(path.read_bytes(), f"{name} plot", caption) if path.exists() else ""


def sweep_report(out: Path, cfg: dict, base: dict, defenses: list[dict], studies: list[dict], rows: list[dict],
                 points: list[dict] | None, overrides: list[str] = ()) -> str:
    """The page's HTML (``overrides``: the fit options given on the command line, which win)."""
    kinds = " and ".join(k for k, on in (("defenses", defenses), ("studies", studies)) if on)
    body = [f'<p class="outcome">{len([r for r in rows if r.get("status") == "ok"])} cells done '
            f'({len([r for r in rows if r.get("status") != "ok"])} could not run). A victim counts as '
            f"reconstructed at {h.esc(score_label(rows))} &ge; {h.esc(cfg['success_ssim'])}"
            + (f"; a defense holds where at most {100 * float(cfg['target_success']):.0f}% of the victims are "
               "reconstructed, and its <b>breaking point</b> is the weakest setting that holds (refined by "
               f"bisection, {h.esc(cfg['refine'])} steps)." if defenses else ".") + "</p>",
            "<h2>The attack (every cell)</h2>",
            h.settings_list({**_attack_settings(base),
                             **({"command line (wins)": " ".join(overrides)} if overrides else {})})]
    if defenses:
        body.append("<h2>Breaking points</h2>")
        if points:
            body.append(h.table(
                ["defense", "parameter", "breaking point", "last leaking", "resolution", "note"],
                [[p["defense"], p["param"], "none" if p.get("breaking_point") is None else p["breaking_point"],
                  p.get("last_leaking", ""), p.get("resolution", ""), p["note"]] for p in points],
                text_columns=(0, 1, 5)))
        else:
            body.append("<p>The search has not finished yet: the breaking points appear when it has.</p>")
    for d in defenses:
        mine = defense_cells(rows, d)
        if not mine:
            continue
        desc = defense_args(d)
        body.append(f"<h2>Defense {h.esc(d['name'])}: {h.esc(d['class_path'].rsplit('.', 1)[-1])}"
                    f"{h.esc(', ' + desc if desc else '')}</h2>")
        body.append(f"<p>{h.esc(d['param'])} from weakest to strongest ({'larger' if d['stronger'] == 'larger' else 'smaller'}"
                    " values defend more); rows between grid values are the bisection.</p>")
        body.append(_table(out, d["param"], headers(mine), metrics(mine), mine, extra=["reconstructed", "cell report"]))
        body.append(_plot(out, d["name"], f"{d['name']}: each metric against {d['param']} (red line: breaking point)."))
    for s in studies:
        mine = study_rows(rows, s)
        if not mine:
            continue
        body.append(f"<h2>Study {h.esc(s['name'])}: {h.esc(s['key'])}</h2>")
        body.append(_table(out, s["label"], study_headers(mine), study_metrics(mine), mine, extra=["reconstructed", "cell report"]))
        body.append(_plot(out, s["name"], f"{s['name']}: each metric against {s['key']}."))
    body.append(f'<p class="meta">Sweep folder: {h.esc(out)} (results.csv, results.md, plots, cells/, runs/; '
                f"TensorBoard: tensorboard --logdir {h.esc(out)}).</p>")
    # what the clients held, in their kind's words (images, records, sentences); "data" for a mix
    data = {kind_class(r.get("kind") or "image").records for r in rows if r.get("status") == "ok"}
    records = data.pop() if len(data) == 1 else "data"
    return h.page(f"leakage sweep: {kinds or 'no grids'} ({out.name})", body, threat_model(base, studies), records)


def threat_model(base: dict, studies: list[dict]) -> str:
    """The threat model of the sweep's cells (their base config's server), or that the cells differ."""
    varied = [s["key"] for s in studies if str(s.get("key", "")).startswith(SERVER_KEYS)]
    if varied:
        return f"per cell (the study varies {varied[0]}; each cell's report names its own)"
    data = base.get("data") or {}
    try:
        source = data.get("source")
        dataset = ((source.get("init_args") or {}).get("dataset") if isinstance(source, dict) else None) or "cifar10"
        return server_from_config(data.get("server"), str(dataset).lower()).describe() + (
            PUBLIC_LABELS if data.get("public_labels") else "")
    except ValueError:  # a cell's own run refuses it, in its own line
        return f"server {data.get('server')!r} (see the cells)"



def write_report(out: Path, cfg: dict, base: dict, defenses: list[dict], studies: list[dict], rows: list[dict],
                 points: list[dict] | None, overrides: list[str] = ()) -> None:
    h.write(confined(out, "report.html"), sweep_report(out, cfg, base, defenses, studies, rows, points, overrides))
