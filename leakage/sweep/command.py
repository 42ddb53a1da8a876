"""``leakage sweep``'s command line: the configs to read, ``--sweep.*`` settings, fit options."""

from __future__ import annotations

import argparse
import sys

import yaml

from leakage.sweep.cells import Sweep
from leakage.sweep.config import SWEEP_DEFAULTS, read_configs


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one ``leakage: error:`` line from the CLI, not usage and exit
        raise ValueError(f"leakage sweep: {message} (see `leakage sweep --help`)")


def _value(key: str, text: str):
    """A ``--sweep.KEY`` value: the output folder as given, numbers as YAML reads them."""
    if key == "output":
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse(args: list[str]) -> Sweep:
    """The sweep that ``leakage sweep ARGS`` runs: ``--config`` files, ``--sweep.*`` settings, and
    fit options that apply to every cell."""
    ap = _Parser(prog="leakage sweep", description=sys.modules[__package__].__doc__, allow_abbrev=False,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", required=True, help="sweep config(s), merged in order")
    for key, default in SWEEP_DEFAULTS.items():
        ap.add_argument(f"--sweep.{key}", dest=key, default=None, help=f"override sweep.{key} (default {default})")
    known, overrides = ap.parse_known_args(args)
    for o in overrides:
        if o == "--sweep" or o.startswith("--sweep."):
            raise ValueError(f"unknown sweep option {o.split('=')[0]!r}; allowed: "
                             + ", ".join(f"--sweep.{k}" for k in SWEEP_DEFAULTS))
    base, sweep = read_configs(known.config)
    if not sweep:
        raise ValueError("a sweep config needs a 'sweep' section (see `leakage sweep --help`)")
    for key in SWEEP_DEFAULTS:
        if getattr(known, key) is not None:
            sweep[key] = _value(key, getattr(known, key))
    return Sweep(base, sweep, overrides)


def main(args: list[str]) -> None:
    sweep = parse(args)
    sweep.run()
    if not sweep.writer:  # another rank of a sweep on several processes: rank 0 reports
        return
    print("\n" + sweep.table)
    made = "results.csv, results.md" + (", breaking_points.json" if sweep.defenses else "") + ", report.html"
    print(f"sweep results in {sweep.out}/ ({made}, plots; tensorboard --logdir {sweep.out})", file=sys.stderr)
    if sweep.unwritten:  # a full disk after cells ran: the table above is in memory, not all of it on disk
        reasons = ", ".join(dict.fromkeys(sweep.unwritten.values()))
        print(f"leakage: error: the sweep could not write {', '.join(sweep.unwritten)} under {sweep.out}: {reasons} "
              "(the table above holds every cell that ran)", file=sys.stderr)
        sys.exit(1)
