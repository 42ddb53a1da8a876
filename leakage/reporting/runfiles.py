"""A run's files on disk: checked before the attack, written whole or not at all, and marked while
the run is under way.

The rule a reader of a run folder goes by (docs/getting-started.md, "Set up and run"):

- ``RUNNING`` (the process id, host and start time) is written when the attack starts and removed
  when the run ends in any way its process lives through. A folder that still holds it while no such
  process runs is a run that was killed (SIGKILL, power loss): what it holds is not a result.
- ``metrics.json``'s ``"status"`` is ``"complete"`` for a finished attack and ``"partial"`` for one
  that was interrupted (SIGINT, Ctrl+C) or failed, with ``"reason"`` and the ``"step"`` it reached;
  the table (``metrics.csv``, ``metrics.txt``) is then each victim's best reconstruction so far, and
  ``metrics.txt`` says so in its first line. ``metrics.json`` is written after the other artifacts.
- ``reconstructions.safetensors`` (:data:`RECONSTRUCTIONS`) holds the reconstructions, written before
  anything scores them; a run whose scoring fails is ``"partial"`` with the reason ``scoring failed: ...``.

Every artifact is written to a temporary file beside it and moved into place (:func:`atomic_write`),
so a full disk never leaves a truncated ``gallery.png``: the file is the old one, the new one, or
absent.

Every JSON file the package writes is strict JSON (:func:`json_text`): a number that is not finite
(a metric with nothing to measure, such as the continuous accuracy of a table without continuous
features, or a mean over victims that all failed) is written as ``null``, never as the ``NaN`` or
``Infinity`` that Python's ``json`` writes by default and other parsers refuse.
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional, Union

RUNNING = "RUNNING"
#: the run's reconstructions, written before they are scored (safetensors: tensors and string metadata, no pickle)
RECONSTRUCTIONS = "reconstructions.safetensors"


def finite_or_null(value: Any) -> Any:
    """``value`` with every float that is not finite (NaN, infinity) replaced by None, through dicts,
    lists and tuples; other values as they are (tensors and NumPy scalars as Python numbers)."""
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()  # a 0-d tensor or a NumPy scalar
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def json_text(value: Any, **kwargs: Any) -> str:
    """Strict JSON of ``value`` (``json.dumps`` arguments in ``kwargs``): non-finite floats as ``null``
    (:func:`finite_or_null`); anything else that JSON cannot hold is an error, never a ``NaN`` literal."""
    default = kwargs.pop("default", None)
    if default is not None:  # what ``default`` makes of an object is made strict too
        kwargs["default"] = lambda obj: finite_or_null(default(obj))
    return json.dumps(finite_or_null(value), allow_nan=False, **kwargs)


def atomic_write(path: Path, data: Union[str, bytes]) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a part
    (on an error the temporary file is removed and the error raised)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def check_writable(folder: Union[str, Path], what: str) -> None:
    """Refuse, in one line (ValueError), a folder the run cannot write into: one whose path runs
    through a file (``NotADirectoryError``), or whose nearest existing folder refuses a new file
    (read-only file system, no permission). Nothing is left behind: the test file is removed and
    missing folders are not created."""
    path = Path(os.path.expandvars(str(folder))).expanduser()
    if "://" in str(folder):  # a remote file system (fsspec): left to the logger
        return
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot make the folder {folder} ({what}): {existing} is a file")
    probe = existing / f".leakage-write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as err:
        raise ValueError(f"cannot write into the folder {folder} ({what}): {err.strerror or err} ({existing})") from None
    os.close(fd)
    os.unlink(probe)


def mark_running(folder: Path) -> None:
    """Write the ``RUNNING`` marker of a run that starts in ``folder``."""
    atomic_write(folder / RUNNING, f"pid {os.getpid()} on {socket.gethostname()} since "
                                   f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")


def mark_ended(folder: Path) -> None:
    """Remove the ``RUNNING`` marker (the run ended; ``metrics.json`` says how)."""
    try:
        (folder / RUNNING).unlink()
    except FileNotFoundError:
        pass


class Artifacts:
    """Writes a run's artifacts into ``folder``, each atomically, and keeps the names of those that
    could not be written (a full disk, a folder gone) instead of raising: the results already shown
    are not lost to a traceback."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.unwritten: list[str] = []
        self.reason: Optional[str] = None

    def write(self, name: str, data: Union[str, bytes]) -> None:
        try:
            atomic_write(self.folder / name, data)
        except OSError as err:
            self.unwritten.append(name)
            self.reason = self.reason or err.strerror or os.strerror(err.errno or errno.EIO)

    def failure_line(self) -> Optional[str]:
        """One line naming what could not be written, and why (None when everything was)."""
        if not self.unwritten:
            return None
        return (f"could not write {', '.join(self.unwritten)} to {self.folder}: {self.reason} "
                "(the table above is the run's result)")


def save_reconstructions(folder: Path, tensors: dict, metadata: dict[str, str]) -> Optional[str]:
    """Write the tensors ``{name: tensor}`` with their string ``metadata`` to ``folder/RECONSTRUCTIONS``,
    atomically; None when written, else why not (a full disk, a folder that cannot be made)."""
    from safetensors.torch import save

    files = Artifacts(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return err.strerror or str(err)
    files.write(RECONSTRUCTIONS, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata))
    return files.reason if files.unwritten else None


def fresh_run_dir(base: Path, name: str = "leakage") -> Path:
    """A new, empty ``base/name/version_N`` folder (``name`` "": ``base/version_N``), the next free
    N, claimed with ``mkdir`` so that runs started at the same moment never share one."""
    parent = base / name
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[len("version_"):]) for p in parent.glob("version_*") if p.name[len("version_"):].isdigit()]
    n = max(taken, default=-1) + 1
    while True:
        run = parent / f"version_{n}"
        try:
            run.mkdir()
            return run
        except FileExistsError:  # another run took it meanwhile
            n += 1
