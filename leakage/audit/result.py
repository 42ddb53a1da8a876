"""An audit's result: the checks' findings, one verdict, a printed table, ``metrics.json`` and ``audit.html``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from leakage.audit.base import Finding
from leakage.reporting.htmlreport import CSS, esc, table, write

#: the verdicts from worst to best: the audit's verdict is its worst check's
ORDER = ("fail", "warn", "pass", "skipped")
#: what the page says the audit is
ABOUT = ("A client-side audit of the model a federated-learning server sent: each check reads the received weights "
         "(and, where given, the previous round's weights, a pinned architecture and the client's own batch) and "
         "gives a score and a verdict by thresholds calibrated on honest models; the last runs a malicious server's "
         "closed-form read-out on the client's own batch and counts what comes back exactly. A pass is no proof "
         "of honesty: it says these checks found none of the patterns they know.")


@dataclass
class AuditResult:
    """The findings of every check (:class:`~leakage.audit.base.Finding`), in the order they ran.

    ``verdict`` is the worst finding's (``fail``, ``warn`` or ``pass``); ``str()`` is the table the
    command prints; :meth:`write` saves ``metrics.json`` and ``audit.html``; ``exit_code`` is 1 when a
    check fails (what ``leakage audit`` exits with), else 0."""

    findings: list[Finding]
    model: str = ""
    settings: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        seen = {f.verdict for f in self.findings}
        return next((v for v in ORDER[:2] if v in seen), "pass")

    @property
    def failed(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == "fail"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def __getitem__(self, check: str) -> Finding:
        for f in self.findings:
            if f.check == check:
                return f
        raise KeyError(f"no check {check!r} ran; the checks: {', '.join(f.check for f in self.findings)}")

    def headline(self) -> str:
        """One line: the verdict, the checks that fail or warn, and what would leak."""
        fails = [f.check for f in self.findings if f.verdict == "fail"]
        warns = [f.check for f in self.findings if f.verdict == "warn"]
        line = f"audit of the received model{f' ({self.model})' if self.model else ''}: {self.verdict.upper()}"
        if fails:
            line += f"; failed: {', '.join(fails)}"
        if warns:
            line += f"; warnings: {', '.join(warns)}"
        return line

    def leak_line(self) -> str:
        """"this model isolates 58 of your 64 samples", or why nothing was read."""
        try:
            leak = self["what would leak"]
        except KeyError:
            return ""
        if leak.verdict == "skipped":
            return f"what would leak: not measured ({leak.reason})"
        d = leak.details
        if not d.get("attack"):
            return f"what would leak: {leak.reason}"
        return f"this model isolates {d['isolated']} of your {d['batch']} samples ({d['attack']} on your own batch)"

    def rows(self) -> list[list]:
        return [[f.check, _score(f.score), f.verdict, f.reason] for f in self.findings]

    def __str__(self) -> str:
        rows = self.rows()
        widths = [max(len(str(r[i])) for r in rows + [["check", "score", "verdict", ""]]) for i in range(3)]
        head = f"{'check':<{widths[0]}}  {'score':>{widths[1]}}  {'verdict':<{widths[2]}}  reason"
        lines = [self.headline(), head]
        lines += [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows]
        leak = self.leak_line()
        return "\n".join(lines + ([leak] if leak else []))

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "model": self.model, "headline": self.headline(), "what_would_leak": self.leak_line(),
                "checks": [f.as_dict() for f in self.findings], "settings": self.settings}

    def html(self) -> str:
        classes = ["failed" if f.verdict == "fail" else "bad" if f.verdict == "warn" else "" for f in self.findings]
        body = [f"<h1>{esc(self.headline())}</h1>", f'<p class="meta">{esc(ABOUT)}</p>']
        leak = self.leak_line()
        if leak:
            body.append(f'<p class="outcome"><b>{esc(leak)}</b></p>')
        body += ["<h2>Checks</h2>", table(["check", "score", "verdict", "reason"], self.rows(), classes, text_columns=(0, 2, 3))]
        if self.settings:
            body += ["<h2>Thresholds</h2>", table(["check", "settings"], [
                [name, ", ".join(f"{k} {v}" for k, v in values.items())] for name, values in self.settings.items()],
                text_columns=(0, 1))]
        return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                          f"<title>{esc(self.headline())}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
                          *body, "</body>", "</html>", ""])

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Save ``metrics.json`` and ``audit.html`` in ``folder`` (made if missing); returns their paths."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"metrics": out / "metrics.json", "html": out / "audit.html"}
        write(paths["metrics"], json.dumps(self.as_dict(), indent=2) + "\n")
        write(paths["html"], self.html())
        return paths


def _score(score: float) -> str:
    if score != score:
        return "-"
    if score == float("inf"):
        return "inf"
    return f"{score:.3g}"

