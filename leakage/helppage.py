"""``leakage fit --help``: one short page built from the parser itself.

The page lists the command's own options: the attack's (``--model.*``, of the attack chosen with
``--attack``), the data module's (``--data.*``), the report's (``--report.*``) and the few
``--trainer.*`` options an attack run sets. An option that takes one of several classes (a
source, a client, a server, an optimizer, ...) names its classes and how to list one class's
settings (``--data.server.help ImprintServer``). ``leakage fit --help-all`` prints jsonargparse's
full page, every Lightning trainer option included.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from typing import Any, Iterable

#: the trainer options an attack run sets (the rest of Lightning's are in ``--help-all``)
TRAINER_OPTIONS = ("max_steps", "max_time", "accelerator", "devices", "num_nodes", "strategy", "precision",
                   "logger", "callbacks", "default_root_dir", "enable_progress_bar")

HELP_ALL = "--help-all"

_WIDTH = 100
_COLUMN = 34
_LONGEST = 220  # characters of an option's description


def _first_sentence(text: str) -> str:
    """The help text's first sentence, without reStructuredText markup."""
    text = re.sub(r":(class|func|mod|data|meth|attr):`~?([^`]+)`", lambda m: m.group(2).split(".")[-1], text or "")
    text = text.replace("``", "`").replace("\n", " ")
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s*\(type: .*$", "", text)  # jsonargparse's own suffix
    match = re.match(r"(.+?\.)(\s|$)", text)
    sentence = (match.group(1) if match else text).rstrip(".")
    if len(sentence) > _LONGEST:
        sentence = sentence[:_LONGEST].rsplit(" ", 1)[0].rstrip(",;:(.") + " ..."
    return sentence


def _default(action: Any) -> str:
    value = getattr(action, "default", None)
    if value is None or inspect.isclass(value):
        return ""
    if type(value).__module__.startswith("jsonargparse") or hasattr(value, "class_path"):
        path = getattr(value, "class_path", None) or type(value).__name__
        return str(path).split(".")[-1]
    if type(value).__module__.startswith("leakage."):  # a lazy_instance of a settings class
        return next((c.__name__ for c in type(value).__mro__ if c.__module__.startswith("leakage.")), "")
    if isinstance(value, (str, int, float, bool)):
        return str(value)
    return ""


def _classes(base: type) -> list[str]:
    """The package's concrete classes an option of type ``base`` takes, by name."""
    found, todo = [], [base]
    while todo:
        cls = todo.pop(0)
        usable = not inspect.isabstract(cls) and getattr(cls, "name", None) != ""  # a base names no choice
        if cls.__module__.startswith("leakage.") and usable and not cls.__name__.startswith("LazyInstance"):
            found.append(cls.__name__)
        todo.extend(cls.__subclasses__())
    return sorted(dict.fromkeys(found))


def _entry(option: str, text: str) -> list[str]:
    if len(option) + 2 >= _COLUMN:
        head = [f"  {option}"]
        body = textwrap.wrap(text, _WIDTH - _COLUMN) or [""]
        return head + [" " * _COLUMN + line for line in body]
    body = textwrap.wrap(text, _WIDTH - _COLUMN) or [""]
    first = f"  {option}".ljust(_COLUMN) + body[0]
    return [first] + [" " * _COLUMN + line for line in body[1:]]


def _describe(action: Any, helps: dict[str, Any]) -> str:
    text = _first_sentence(action.help or "")
    dest = action.dest
    helper = helps.get(f"{dest}.help")
    if helper is not None:
        bases = getattr(helper, "_help_types", None) or ()
        names = [n for b in bases if inspect.isclass(b) for n in _classes(b)]
        if 1 < len(names) <= 12:
            text += f". Classes: {', '.join(names)}"
        text += f". Settings of one: --{dest}.help CLASS"
    default = _default(action)
    if default:
        text += f" (default: {default})"
    return text


def short_help(parser: Any, description: str) -> str:
    """The short ``leakage fit --help`` page of ``parser`` (the ``fit`` subcommand's)."""
    actions = [a for a in parser._actions if a.option_strings]
    helps = {a.dest: a for a in actions if a.dest.endswith(".help")}

    def options(prefix: str, names: Iterable[str] | None = None) -> list[str]:
        out = []
        for action in actions:
            dest = action.dest
            if not dest.startswith(prefix) or dest.endswith(".help") or "." in dest[len(prefix):]:
                continue
            if names is not None and dest[len(prefix):] not in names:
                continue
            if not any(s.startswith("--") for s in action.option_strings) or type(action).__name__ == "ActionLink":
                continue
            option = next(s for s in action.option_strings if s.startswith("--") and not s.endswith("+"))
            out.extend(_entry(f"{option} {dest[len(prefix):].split('.')[-1].upper()}", _describe(action, helps)))
        return out

    lines = ["usage: leakage fit [--config FILE] [--section.option VALUE ...]", ""]
    lines += textwrap.wrap(description, _WIDTH) + [""]
    lines += ["general:"]
    lines += _entry("-c FILE, --config FILE", "a YAML config (configs/*.yaml); options after it override it")
    lines += [line for name in ("attack", "seed_everything") for line in options("", (name,))]
    lines += _entry("--print_config", "print the whole configuration these options make, and exit")
    for title, prefix, names in (
        ("the attack (--model.*)", "model.", None),
        ("the victims and their update (--data.*)", "data.", None),
        ("the report (--report.*)", "report.", None),
        ("the trainer (a few of Lightning's --trainer.* options)", "trainer.", TRAINER_OPTIONS),
    ):
        body = options(prefix, names)
        if body:
            lines += ["", f"{title}:"] + body
    lines += ["", "Defenses are callbacks: --trainer.callbacks+ NormClip --trainer.callbacks.max_norm 1.0 "
                  "(classes and their settings: --trainer.callbacks.help CLASS).",
              f"Every option, each of Lightning's trainer options included: leakage fit {HELP_ALL}"]
    return "\n".join(lines) + "\n"
