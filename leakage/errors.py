"""One-line error messages, shared by ``leakage fit`` and ``leakage sweep``.

Errors reach the user as a single ``leakage: error: ...`` line. Exceptions raised inside a class that
jsonargparse instantiates arrive wrapped in a multi-line message; :func:`one_line` finds the line
that explains the mistake.
"""

from __future__ import annotations

import re

#: phrases of the package's own error messages (how a nested reason is recognised in a wrapper)
OWN_PHRASES = re.compile(r"must be|must hold|unknown |needs |need |not found|does not fit|cannot |do not split")


def one_line(err: BaseException) -> str:
    """The one line that says why ``err`` happened: the message itself when it has one line, else
    the last of its lines that is one of the package's own reasons, else its first line."""
    lines = [ln.strip().lstrip("- ").strip() for ln in str(err).splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(err).__name__
    own = [ln for ln in lines[1:] if OWN_PHRASES.search(ln)]
    return own[-1] if own else lines[0]
