"""MkDocs hook: fills docs/reference.md at build time from the CLI and the package itself.

The page's source holds markers; each is replaced by what the installed package says now, so the
reference cannot drift from the code: ``leakage fit --help``, ``leakage sweep --help``, the Python
presets (:data:`leakage.presets.PRESETS`) and the leading comment of every preset config.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _help(*command: str) -> str:
    """One ``leakage`` command's output, run from the repository root as the docs' commands are."""
    done = subprocess.run([sys.executable, "-m", "leakage.cli", *command], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=True)
    return "```text\n" + done.stdout.rstrip() + "\n```"


def _presets() -> str:
    from leakage.presets import PRESETS

    rows = ["| name | attack class | steps | config | what it is |", "|---|---|---|---|---|"]
    for name, preset in PRESETS.items():
        about = preset.about.replace("|", "\\|")
        rows.append(f"| `{name}` | `{preset.attack}` | {preset.steps} | `configs/{preset.config}.yaml` | {about} |")
    return "\n".join(rows)


def _configs() -> str:
    parts = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        comment = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            comment.append(line[1:].strip())
        text = " ".join(comment) or "(no leading comment)"
        parts.append(f"**`configs/{path.name}`**: {text}")
    return "\n\n".join(parts)


MARKERS = {
    "<!-- leakage fit --help -->": lambda: _help("fit", "--help"),
    "<!-- leakage sweep --help -->": lambda: _help("sweep", "--help"),
    "<!-- presets -->": _presets,
    "<!-- configs -->": _configs,
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "reference.md":
        return markdown
    for marker, make in MARKERS.items():
        if marker not in markdown:
            raise ValueError(f"docs/reference.md lost its marker {marker}")
        markdown = markdown.replace(marker, make())
    return markdown
