"""A cell's `leakage fit`: the command-line options a sweep passes on to every cell (without the
logger, which the sweep sets; without the number of processes, which no fingerprint holds), and the
one line that says why a cell could not run."""

from __future__ import annotations

import argparse
import re


def cell_errors() -> tuple[type[BaseException], ...]:
    """The errors that fail one cell (said in one line by :func:`cell_error`), not the sweep."""
    from argparse import ArgumentError

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return (ValueError, TypeError, FileNotFoundError, RuntimeError, ArgumentError, MisconfigurationException)


_UNKNOWN_KEY = re.compile(r"does not accept option '([^']+)'")
#: trainer settings that say how many processes run a cell, not what it computes: left out of the
#: cell fingerprints, so that a sweep restarted on another number of processes or nodes continues
SCALE_KEYS = ("strategy", "devices", "num_nodes")


def without_logger(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Command-line fit options without those that set the logger (``--trainer.logger ...``,
    ``--trainer.logger.init_args.save_dir ...``, ``name``, ``version``, ...), and the flags left out:
    a sweep logs every cell into its own ``runs/<cell>/``."""
    out, dropped, skip = [], [], False
    for arg in overrides:
        flag = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif flag == "--trainer.logger" or flag.startswith("--trainer.logger."):
            dropped.append(flag)
            skip = "=" not in arg
        else:
            out.append(arg)
    return out, dropped


def scale_free(overrides: list[str]) -> list[str]:
    """Command-line fit options without ``--trainer.strategy/devices/num_nodes`` (and their values)."""
    flags = {f"--trainer.{k}" for k in SCALE_KEYS}
    out, skip = [], False
    for arg in overrides:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        elif arg.split("=", 1)[0] not in flags:
            out.append(arg)
    return out


def cell_error(err: Exception) -> str:
    """One line that says why a cell could not run."""
    from leakage.engine.errors import OWN_PHRASES, one_line

    text = str(err)
    if isinstance(err, argparse.ArgumentError):  # the fit parser (exit_on_error=False) rejected the config
        m = _UNKNOWN_KEY.search(text)
        if m:
            return f"unknown config key {m.group(1)!r}: `leakage fit` has no such option (see `leakage fit --help`)"
        lines = [ln.strip().lstrip("- ").strip() for ln in text.splitlines() if ln.strip()]
        own = [ln for ln in lines[1:] if OWN_PHRASES.search(ln)]
        line = own[-1] if own else " ".join(lines[:2])
        return re.sub(r'^Parser key "([^"]+)":', r"invalid value for \1:", line)[:300]
    return one_line(err)[:300]
