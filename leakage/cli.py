"""The ``leakage`` command: ``leakage fit`` (the LightningCLI of :mod:`leakage.fit`), ``leakage sweep`` and
``leakage audit`` (:mod:`leakage.audit.command`: exit status 1 when a check fails).

Bad input ends in one ``leakage: error: ...`` line on stderr and exit status 2; ``--help`` shows the
full documentation.
"""

from __future__ import annotations

import logging
import sys
import warnings
from argparse import ArgumentError

from leakage.attacks.gradient_inversion import GradientInversion
from leakage.data.datamodule import VictimDataModule
from leakage.engine.errors import LIGHTNING_HINTS, one_line, parser_error_line
from leakage.fit import TRAINER_DEFAULTS, LeakageCLI

COMMANDS = ("fit", "sweep", "audit")

USAGE = """\
usage: leakage fit [--config FILE] [--section.option VALUE ...]
       leakage sweep --config FILE [--sweep.option VALUE ...] [fit options ...]
       leakage audit --model NAME --weights FILE [--previous FILE] [--batch 0-63] [--out DIR]
"""

HELP = USAGE + """
Reconstruct federated-learning clients' data from the gradients they share.

commands:
  fit     run one gradient-inversion attack (every option: leakage fit --help)
  sweep   run the attack over grids of defense strengths or of any fit setting
          (leakage sweep --help)
  audit   check the model a server sent before training on it (leakage audit --help)

On N processes, GPUs or nodes, add --trainer.strategy ddp --trainer.devices N to either command
(each process attacks a shard of the victims; rank 0 writes the results of all).
"""


class _NoAdvert(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger from the run's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet() -> None:
    for msg in LIGHTNING_HINTS:
        warnings.filterwarnings("ignore", message=msg)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdvert) for f in rank_zero.filters):
        rank_zero.addFilter(_NoAdvert())


def _fail(message: str) -> None:
    print(f"leakage: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(args: list[str] | None = None) -> None:
    _quiet()
    argv = sys.argv[1:] if args is None else list(args)
    if not argv:
        print(USAGE, file=sys.stderr, end="")
        _fail("choose a command: `leakage fit`, `leakage sweep` or `leakage audit` (`leakage --help` says more)")
    command = argv[0]
    if command in ("-h", "--help"):
        print(HELP, end="")
        return
    if command not in COMMANDS:
        if command.startswith("-"):
            _fail(f"start with a command: `leakage fit {command} ...` or `leakage sweep ...`")
        _fail(f"unknown command {command!r}: use `leakage fit`, `leakage sweep` or `leakage audit`")
    try:
        if command == "audit":
            from leakage.audit.command import main as audit_main

            code = audit_main(argv[1:])
            if code:
                sys.exit(code)
            return
        if command == "sweep":
            from leakage.sweep import main as sweep_main

            sweep_main(argv[1:])
            return
        cli = LeakageCLI(
            GradientInversion,
            VictimDataModule,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            # the parser raises instead of printing its 100-line usage; its reason is shown in one line
            parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False}},
            args=args,  # None from the console: LightningCLI reads sys.argv itself
        )
        if any(getattr(cb, "unwritten", None) or getattr(cb, "unscored", None) for cb in cli.trainer.callbacks):
            sys.exit(1)  # the table was printed; some of the run's files could not be written, or not scored (said above)
    except ArgumentError as err:
        _fail(getattr(err, "leakage_line", None) or parser_error_line(str(err)))
    except (ValueError, FileNotFoundError) as err:
        _fail(one_line(err))
    except KeyboardInterrupt:  # before or after the attack (during it, the run ends as a partial run)
        print("leakage: interrupted", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
