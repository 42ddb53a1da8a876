"""Input files: what the package opens is a regular file, and a file refused unread says why.

Shared by image folders (:mod:`leakage.data.imagefolder`), gradient files (:mod:`leakage.federated.client`) and
weights files (:mod:`leakage.engine.models`).
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import stat
import warnings
from pathlib import Path
from typing import Any

import torch

_KINDS = (
    (stat.S_ISDIR, "a directory, not a file"),
    (stat.S_ISFIFO, "a FIFO (named pipe), not a regular file: reading it would wait for a writer"),
    (stat.S_ISCHR, "a character device, not a regular file"),
    (stat.S_ISBLK, "a block device, not a regular file"),
    (stat.S_ISSOCK, "a socket, not a regular file"),
)
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def regular_file(path: str | Path, what: str) -> Path:
    """``path`` when it is a regular file (or a link to one); otherwise a one-line error, before
    anything opens it, that says what it is: missing (``FileNotFoundError``), a broken link, a link
    loop, a directory, a FIFO, a device or a socket (``ValueError``)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # follows links: a link is what it points to
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(f"{what} {path} is a broken symbolic link (to {os.readlink(path)})") from None
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError(f"{what} {path} is a symbolic link loop, not a file") from None
        raise ValueError(f"cannot read {what} {path}: {err.strerror}") from None
    if stat.S_ISREG(mode):
        return path
    kind = next((kind for test, kind in _KINDS if test(mode)), "not a regular file")
    target = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
    raise ValueError(f"{what} {path}{target} is {kind}")


def load_failure(path: str | Path, what: str, err: BaseException) -> str:
    """The one line for a tensor file that ``safetensors`` or ``torch.load(weights_only=True)`` did
    not read: a pickle of other objects than tensors is refused because unpickling it could run
    code (with how to write a safe file); any other failure is its first line."""
    text = str(err).strip()
    if isinstance(err, pickle.UnpicklingError) and text.startswith("Weights only load failed"):
        found = _GLOBAL.search(text)
        with open(path, "rb") as f:
            plain_pickle = f.read(2) in {b"\x80" + bytes([p]) for p in range(2, 6)}  # pickle's PROTO opcode
        if found or plain_pickle:
            held = f"it holds {found.group(1)}, not only tensors" if found else "it is a pickle, not a torch.save file"
            return (f"{what} {path} was refused: unpickling it could run code ({held}); save a .safetensors file "
                    "(safetensors.torch.save_file) or a plain state_dict of tensors "
                    "(torch.save(model.state_dict(), path))")
        # torch's own first line would advise weights_only=False: the bytes are no pickle at all
        return f"cannot read {what} {path}: not a torch.save file (corrupted, or another format)"
    reason = text.splitlines()[0] if text else type(err).__name__
    return f"cannot read {what} {path}: {reason[:200]}"


def read_tensors(path: str | Path, what: str) -> Any:
    """What a tensor file holds, never unpickling code: ``.safetensors``, or ``torch.load`` with
    ``weights_only=True``; a file that is not a regular file or cannot be read so is a one-line error."""
    path = regular_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on the pickle protocol of a file it refuses anyway
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupted, truncated or hostile files
        raise ValueError(load_failure(path, what, err)) from None
