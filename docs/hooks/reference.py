"""MkDocs hook: fills docs/reference.md at build time from the CLI and the package itself.

The page's source holds markers; each is replaced by what the installed package says now, so the
reference cannot drift from the code: ``leakage fit --help`` and ``--help-all``, ``leakage sweep
--help``, the settings of every class an option takes (read from its signature and docstring, as
``--data.server.help CLASS`` shows them), the Python presets (:data:`leakage.presets.PRESETS`) and
the leading comment of every preset config.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _help(*command: str) -> str:
    """One ``leakage`` command's output, run from the repository root as the docs' commands are, in this
    process (the package is imported here anyway; a process of its own costs seconds to start), 80 columns
    wide as in a pipe unless ``COLUMNS`` says otherwise."""
    import contextlib
    import io
    import os

    from leakage.cli import main

    out, cwd, columns = io.StringIO(), os.getcwd(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = columns or "80"
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out):
            main(list(command))
    except SystemExit as done:
        if done.code not in (0, None):
            raise RuntimeError(f"leakage {' '.join(command)} exited with {done.code}") from None
    finally:
        os.chdir(cwd)
        if columns is None:
            del os.environ["COLUMNS"]
    return "```text\n" + out.getvalue().rstrip() + "\n```"


#: the options that take one of several classes, each with its base class's import path
OBJECTS = (
    ("--data.source", "leakage.data.sources.Source"),
    ("--data.client", "leakage.federated.client.Client"),
    ("--data.server", "leakage.federated.server.Server"),
    ("--model.objective", "leakage.attacks.settings.Objective"),
    ("--model.optimizer", "leakage.attacks.settings.Optimizer"),
    ("--model.dummies", "leakage.attacks.settings.Dummies"),
    ("--model.budget", "leakage.attacks.settings.Budget"),
    ("--trainer.callbacks+", "leakage.federated.defenses.Defense"),
)
#: bases that are no choice themselves (a defense must say what it does)
BASES = ("leakage.federated.defenses.Defense",)


def _import(path: str):
    import importlib

    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _settings_table(cls: type) -> str:
    import inspect

    import docstring_parser

    docs = {}
    for klass in reversed(cls.__mro__):  # a subclass's own description wins
        if klass.__module__.startswith("leakage."):
            docs.update({p.arg_name: p.description for p in docstring_parser.parse(klass.__doc__ or "").params})
    params = [p for name, p in inspect.signature(cls.__init__).parameters.items()
              if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not params:
        return "(no settings)"
    rows = ["| setting | default | what it is |", "|---|---|---|"]
    for p in params:
        default = "required" if p.default is inspect.Parameter.empty else f"`{p.default!r}`"
        about = " ".join((docs.get(p.name) or "").split()).replace("|", "\\|")
        rows.append(f"| `{p.name}` | {default} | {about} |")
    return "\n".join(rows)


def _objects() -> str:
    import inspect

    parts = []
    for option, base_path in OBJECTS:
        base = _import(base_path)
        todo, classes = [base], []
        while todo:
            cls = todo.pop(0)
            todo.extend(cls.__subclasses__())
            if (cls.__module__.startswith("leakage.") and not inspect.isabstract(cls)
                    and getattr(cls, "name", None) != "" and not hasattr(cls, "lazy_get_init_data")
                    and cls not in classes and not (cls is base and base_path in BASES)):
                classes.append(cls)
        for cls in classes:
            summary = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
            parts.append(f"### `{option} {cls.__name__}`\n\n{summary}\n\n{_settings_table(cls)}")
    return "\n\n".join(parts)


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


def _audit_checks() -> str:
    """Every audit check (:mod:`leakage.audit`) with its docstring's first paragraph and its settings."""
    import inspect

    import docstring_parser

    from leakage.audit.run import default_checks

    parts = []
    for check in default_checks():
        cls = type(check)
        doc = docstring_parser.parse(inspect.getdoc(cls) or "")
        about = " ".join(" ".join(filter(None, [doc.short_description, doc.long_description])).split())
        parts.append(f"### `{cls.__name__}` ({check.name})\n\n{about}\n\n{_settings_table(cls)}")
    return "\n\n".join(parts)


MARKERS = {
    "<!-- leakage fit --help -->": lambda: _help("fit", "--help"),
    "<!-- objects -->": _objects,
    "<!-- leakage fit --help-all -->": lambda: _help("fit", "--help-all"),
    "<!-- leakage sweep --help -->": lambda: _help("sweep", "--help"),
    "<!-- leakage audit --help -->": lambda: _help("audit", "--help"),
    "<!-- audit checks -->": _audit_checks,
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
