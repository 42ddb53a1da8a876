"""One-line error messages, shared by ``leakage fit`` and ``leakage sweep``.

Errors reach the user as a single ``leakage: error: ...`` line. Exceptions raised inside a class that
jsonargparse instantiates arrive wrapped in a multi-line message; :func:`one_line` finds the line
that explains the mistake. The parser's own errors (a wrong type, a value outside a ``Literal``, an
unknown option, a class path that does not fit its slot) are many lines of jsonargparse's
explanation; :func:`parser_error_line` turns them into one.
"""

from __future__ import annotations

import ast
import difflib
import re
from typing import Iterable, Iterator

#: phrases of the package's own error messages (how a nested reason is recognised in a wrapper)
OWN_PHRASES = re.compile(r"must be|must hold|unknown |needs |need |not found|does not fit|cannot |do not split")


def one_line(err: BaseException) -> str:
    """The one line that says why ``err`` happened: the message itself when it has one line; for
    jsonargparse's "Does not validate against any of the Union subtypes", the reason of the type
    that was meant (a logger's missing package, a failed weights download, ...); else the last of
    its lines that is one of the package's own reasons, else its first line."""
    lines = [ln.strip().lstrip("- ").strip() for ln in str(err).splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(err).__name__
    if _UNION.match(lines[0]):  # jsonargparse could build none of a setting's types: the one that was meant
        return _reason([ln.rstrip() for ln in str(err).splitlines() if ln.strip()])
    own = [ln for ln in lines[1:] if OWN_PHRASES.search(ln)]
    return own[-1] if own else lines[0]


#: Lightning's warnings that do not apply to an attack (both doors, the CLI and the Python API, drop
#: them): the attack's "data" is one observation, not a stream, its target model is frozen in eval
#: mode on purpose, and the LeafSpec deprecation is Lightning's own
LIGHTNING_HINTS = (
    ".*does not have many workers.*", ".*Total length of `DataLoader` across ranks is zero.*",
    ".*`training_step` returned `None`.*", ".*GPU available but not used.*", ".*module\\(s\\) in eval mode.*",
    ".*isinstance\\(treespec, LeafSpec\\).*", ".*but have no logger configured.*",
)


# ------------------------------------------------------------------------- parser errors
HELP_HINT = "`leakage fit --help-all` lists every option"

_KEY = re.compile(r'^Parser key "([^"]+)":\s*(.*)$')
_LITERAL = re.compile(r"^Expected a (?:typing\.)?Literal\[(.*)\]\. Got value: (.*)$")
_TYPE = re.compile(r"^Expected a <class '([\w.]+)'>(?:\. Got value: (.*))?$")
_CLASS_PROBLEM = re.compile(r"^Problem with given class_path '([^']+)':\s*(.*)$")
_NOT_SUBCLASS = re.compile(r"does not correspond to a subclass of (\w+)")
_GIVEN = re.compile(r"^Given value: (.*)$")
_OPTION_NOT_ACCEPTED = re.compile(r"^Option '([^']+)' is not accepted")
_KEY_NOT_ACCEPTED = re.compile(r"does not accept (?:option|nested key) '([^']+)'")
_REQUIRED = re.compile(r"^the following arguments are required: (.*)$")
_FILE = re.compile(r"^(File does not exist|Path is not a file): '(.*)'$")
_LINKED = re.compile(r"^argument ([\w.]+) --> ([\w.]+):")
_UNION = re.compile(r"^Does not validate against any of the Union subtypes")
#: Lightning's message for a logger whose package is missing: "Requirement 'wandb>=0.12.10' not met. HINT: ..."
_REQUIREMENT = re.compile(r"^Requirement '([A-Za-z0-9_.\-]+)[^']*' not met")
_URL_ERROR = re.compile(r"^<urlopen error (.*)>$")
_GIVEN_CLASS = re.compile(r"class_path='([^']+)'")
_YAML_MARK = re.compile(r'in "<unicode string>", line (\d+), column (\d+)')
#: jsonargparse's explanation around the reason: which subtypes it tried, what it was given
_NOISE = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes:|Errors:|Given value type:|"
    r"Expected a path but .* either not accessible or invalid|Expected a <class 'NoneType'>|"
    r"Not a valid subclass of|Subclass types expect one of|- a class path|- a dict )"
)
_ARTICLE = {"int": "an int", "float": "a float", "bool": "a bool (true or false)", "str": "a string"}


def _entries(lines: list[str]) -> list[tuple[str, list[str]]]:
    """Split indented lines into (line, the more indented lines that belong to it)."""
    out: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(lines):
        head = lines[i]
        depth = len(head) - len(head.lstrip(" -"))
        j = i + 1
        while j < len(lines) and len(lines[j]) - len(lines[j].lstrip(" -")) > depth:
            j += 1
        out.append((head.strip().lstrip("- ").strip(), lines[i + 1 : j]))
        i = j
    return out


def _walk(lines: list[str]) -> Iterator[tuple[str, list[str]]]:
    """Every (line, its nested lines) of an indented explanation, outer before inner."""
    for text, nested in _entries(lines):
        yield text, nested
        yield from _walk(nested)


def _reason(lines: list[str]) -> str:
    """The one reason in the (possibly nested) explanation ``lines`` of a parser error."""
    walk = list(_walk(lines))
    given = next((m.group(1) for ln, _ in walk if (m := _GIVEN.match(ln))), None)
    for text, nested in walk:  # a class path was given: what is wrong with it
        m = _CLASS_PROBLEM.match(text)
        if m:
            inner = _reason([m.group(2)] if m.group(2) else nested)
            if inner.startswith("No module named") or inner.startswith("module ") or "has no attribute" in inner:
                return f"cannot import {m.group(1)!r}: {inner}"
            req = _REQUIREMENT.match(inner)
            if req:
                return f"{m.group(1)} needs the package {req.group(1)}, which is not installed (pip install {req.group(1)})"
            return f"{m.group(1)}: {inner}"
        m = _NOT_SUBCLASS.search(text)
        if m:
            return f"{given or 'the class'} is not a {m.group(1)}"
    for text, nested in walk:
        if _NOISE.match(text) or _GIVEN.match(text):
            continue
        m = _URL_ERROR.match(text)
        if m:  # building the model downloaded its weights (torchvision's weights=...), without internet
            built = _GIVEN_CLASS.search(given or "")
            return (f"cannot build {built.group(1) if built else 'the model'}: downloading its weights failed "
                    f"({m.group(1)}); without internet, leave the weights setting out and give the weights as a "
                    "file with --model.model_weights PATH (.pth, .ckpt or .safetensors)")
        m = _KEY.match(text)
        if m:
            return f"{m.group(1)}: {_reason([m.group(2)] if m.group(2) else nested)}"
        m = _LITERAL.match(text)
        if m:
            try:
                allowed = ", ".join(str(v) for v in ast.literal_eval(f"[{m.group(1)}]"))
            except (ValueError, SyntaxError):
                allowed = m.group(1)
            return f"{m.group(2)!r} is not one of {allowed}"
        m = _TYPE.match(text)
        if m:
            kind = m.group(1).rsplit(".", 1)[-1]
            got = m.group(2) if m.group(2) is not None else given
            return f"expected {_ARTICLE.get(kind, kind)}" + (f", got {got!r}" if got is not None else "")
        m = _OPTION_NOT_ACCEPTED.match(text)
        if m:
            return f"no option {m.group(1)!r}"
        m = _REQUIRED.match(text)
        if m:
            return f"{m.group(1)} must be given"
        return text
    return " ".join(ln.strip() for ln in lines[:2])


def _yaml_problem(lines: list[str]) -> str:
    """``did not find expected ',' (line 2, column 4)`` from PyYAML's message lines."""
    problem = [ln.strip() for ln in lines if ln.strip() and not _YAML_MARK.search(ln)]
    marks = [m for ln in lines if (m := _YAML_MARK.search(ln))]
    where = f" (line {marks[-1].group(1)}, column {marks[-1].group(2)})" if marks else ""
    return f"{problem[-1] if problem else 'invalid YAML'}{where}"


def parser_error_line(message: str, options: Iterable[str] = ()) -> str:
    """One line that says why the ``leakage fit`` parser refused its arguments.

    ``message`` is jsonargparse's (the text of the ``ArgumentError`` it raises with
    ``exit_on_error=False``); ``options`` are the parser's option strings, to suggest the one a
    mistyped option was meant to be.
    """
    lines = [ln.rstrip() for ln in message.splitlines() if ln.strip()]
    if not lines:
        return "invalid arguments"
    first = lines[0].strip()
    if first.startswith("unrecognized arguments:"):
        extra = first.split(":", 1)[1].split()
        flag = next((a.split("=", 1)[0] for a in extra if a.startswith("-")), None)
        if flag is None:
            return f"unexpected argument {extra[0]!r}: settings take the form --section.option VALUE ({HELP_HINT})"
        close = difflib.get_close_matches(flag, list(options), n=1, cutoff=0.8)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"unknown option {flag} ({hint}{HELP_HINT})"
    m = _LINKED.match(first)
    if m:
        return f"{m.group(2)} is taken from the data ({m.group(1)}): set the data's options instead"
    m = _KEY_NOT_ACCEPTED.search(first)
    if m:
        return f"unknown config key {m.group(1)!r} ({HELP_HINT})"
    if first.startswith("Problems parsing config"):
        return f"cannot parse the config: {_yaml_problem([first.split(':', 1)[1], *lines[1:]])}"
    if first.startswith("Unexpected config"):
        return "a config must be a mapping of settings (trainer:, model:, data:, ...)"
    m = _KEY.match(first)
    if m:
        key, rest = m.group(1), m.group(2)
        f = _FILE.match(rest)
        if key == "config" and f:
            return f"config file not found: {f.group(2)}" if f.group(1) == "File does not exist" else \
                f"config {f.group(2)} is not a file"
        if key == "config":
            return f"cannot parse the config: {_yaml_problem([rest, *lines[1:]])}"
        return f"{key}: {_reason([rest] if rest else lines[1:])}"
    return " ".join(ln.strip() for ln in lines[:2])
