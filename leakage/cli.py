"""The ``leakage`` command: ``leakage fit`` (the LightningCLI of :mod:`leakage.fit`) and ``leakage sweep``."""

from __future__ import annotations

import sys
import warnings

from .attack import GradientInversion
from .data import VictimDataModule
from .errors import one_line
from .fit import TRAINER_DEFAULTS, LeakageCLI


def _quiet() -> None:
    # the attack's "data" is one observation, not a stream: these hints do not apply
    for msg in (".*does not have many workers.*", ".*Total length of `DataLoader` across ranks is zero.*",
                ".*`training_step` returned `None`.*", ".*GPU available but not used.*"):
        warnings.filterwarnings("ignore", message=msg)


def main(args: list[str] | None = None) -> None:
    _quiet()
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["sweep"]:
            from .sweep import main as sweep_main

            sweep_main(argv[1:])
            return
        LeakageCLI(
            GradientInversion,
            VictimDataModule,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            args=args,  # None from the console: LightningCLI reads sys.argv itself
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"leakage: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
