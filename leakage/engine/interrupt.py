"""Ctrl+C (SIGINT) during an attack stops it at the end of the current step, never in the middle of one.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when the signal arrives:
in the middle of an optimizer step, of a TensorBoard write or of drawing a gallery, whose state the
partial run's report then has to use. :class:`StepInterrupt` replaces that for the attack's duration:
the first SIGINT is noted (one line on stderr says so) and raised as ``KeyboardInterrupt`` at the
next step boundary (:meth:`StepInterrupt.check`, called by the report callback), where the problems'
state is whole; a second SIGINT raises at once, for a user who does not want to wait for the step.
Lightning then handles the interrupt as usual (the run's folder keeps its table, marked partial, and
``leakage fit`` exits with status 1).

The handler is installed only in the main thread of a single-process run; several processes
(``strategy ddp``) would each stop at their own step and wait for each other in a collective, so
they keep Python's default behaviour.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Optional


class StepInterrupt:
    """The SIGINT handler of one attack (see the module docstring)."""

    def __init__(self) -> None:
        self.pending = False
        self._previous: Optional[Any] = None
        self._installed = False

    def install(self) -> bool:
        """Take over SIGINT until :meth:`restore`; False (and nothing changed) outside the main thread
        or where SIGINT is not Python's default handler (a caller that handles it itself)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        current = signal.getsignal(signal.SIGINT)
        if current is not signal.default_int_handler:
            return False
        self._previous = current
        signal.signal(signal.SIGINT, self._handle)
        self._installed = True
        return True

    def _handle(self, signum, frame) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True
        print("leakage: interrupted: stopping at the end of this attack step (Ctrl+C again to stop now)",
              file=sys.stderr, flush=True)

    def check(self) -> None:
        """Raise the noted interrupt (at a step boundary)."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def restore(self) -> None:
        """Give SIGINT back to the handler it had before :meth:`install`."""
        if self._installed:
            self._installed = False
            if signal.getsignal(signal.SIGINT) == self._handle:
                signal.signal(signal.SIGINT, self._previous)
