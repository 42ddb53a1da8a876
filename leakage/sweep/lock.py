"""One sweep per output folder at a time: the lock file ``<output>/sweep.lock``.

The lock is created atomically (``O_CREAT | O_EXCL``) and holds its holder's pid and host name. A
lock whose process no longer runs on this host is stale and taken over; a lock of another host
cannot be checked, so it is refused like a live one. The holder removes the lock when the sweep
ends, normally or by an exception.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from leakage.sweep.paths import confined

LOCK_NAME = "sweep.lock"
#: a lock file that cannot be read (its holder died between creating and writing it) is stale after this
_UNREADABLE_GRACE_S = 10.0


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (when that cannot be told: assume it does)."""
    if os.name == "nt":  # os.kill(pid, 0) would end the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs as another user
        return True
    return True


class SweepLock:
    """``with SweepLock(output):`` holds the output folder for one sweep."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = confined(out, LOCK_NAME)
        self.text: str | None = None  # what this holder wrote: released only if still there

    def __enter__(self) -> SweepLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                           "token": uuid.uuid4().hex})
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(text)
            self.text = text
            return
        raise ValueError(f"cannot lock the sweep output {self.out}: {self.path} keeps changing hands")

    def release(self) -> None:
        if self.text is None:
            return
        try:
            if self.path.read_text() == self.text:
                self.path.unlink()
        except FileNotFoundError:
            pass
        self.text = None

    def _take_over_if_stale(self) -> None:
        """Remove the lock if its holder is gone; otherwise a one-line error naming the holder."""
        try:
            held = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        try:
            holder = json.loads(held)
            pid, host = int(holder["pid"]), str(holder["host"])
            if pid <= 0:
                raise ValueError
        except (ValueError, TypeError, KeyError):
            if age < _UNREADABLE_GRACE_S:  # being written by its holder right now
                raise ValueError(f"the sweep output {self.out} is in use by another sweep (pid unknown); wait "
                                 "for it to end or choose another --sweep.output") from None
            pid, host = None, socket.gethostname()
        if host != socket.gethostname() or (pid is not None and _alive(pid)):
            where = "" if host == socket.gethostname() else f" on host {host}"
            raise ValueError(f"the sweep output {self.out} is in use by another sweep (pid {pid}{where}); wait for "
                             f"it to end or choose another --sweep.output (if no sweep runs there, delete {self.path})")
        # stale: move it aside (atomic, so only one of several sweeps gets it), check it is the lock
        # that was judged stale, and put back a lock that changed hands meanwhile
        aside = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if aside.read_text() != held:
                try:
                    os.link(aside, self.path)
                except OSError:
                    pass
                return
        finally:
            aside.unlink(missing_ok=True)
        gone = f"pid {pid}, which is no longer running" if pid is not None else "a sweep that died while taking it"
        print(f"leakage sweep: taking over {self.path} from {gone}", file=sys.stderr)
