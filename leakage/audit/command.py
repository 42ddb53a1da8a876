"""``leakage audit``: check the model a server sent before training on it.

::

    leakage audit --model mlp --weights received.safetensors --previous round_041.safetensors --batch 0-63

The received model is a built-in (``--model``, for ``--data``'s input shape) with the received weights
(``.safetensors``, or a ``.pt`` read with ``torch.load(weights_only=True)``: never unpickled). The built-in's
own names and shapes are the pinned architecture unless ``--architecture`` pins another weights file's.
``--batch`` is the client's batch: bundled image indices (``0-63``, ``0,5,9``) or a tensor file holding
``x`` ``[B, *input_shape]`` and ``y`` ``[B]``. The table is printed, ``metrics.json`` and ``audit.html`` are
written to ``--out``; the exit status is 1 when a check fails, 2 for bad input (one line), else 0.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Optional

from torch import Tensor

from leakage.audit.run import audit, read_state
from leakage.engine.files import read_tensors

#: the bundled datasets' input shapes and classes
DATA = {"mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10)}
_RANGE = re.compile(r"^(\d+)-(\d+)$")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="leakage audit", description="Check the model a federated-learning server sent "
                                "before training on it: architecture drift, layers replaced since the previous round, "
                                "imprint rows, trap weights, a class-targeted "
                                "last layer, transmit-SNR, D-SNR on your batch, and what a malicious read-out takes from it.",
                                exit_on_error=False)
    p.add_argument("--model", required=True, help="the architecture you run: a built-in name (lenet, mlp, simple_cnn, resnet18)")
    p.add_argument("--weights", required=True, help="the received weights: .safetensors or .pt (read weights-only)")
    p.add_argument("--previous", help="the previous round's weights (same formats): layers replaced, not trained")
    p.add_argument("--architecture", help="pin the names and shapes of this weights file (default: the built-in's)")
    p.add_argument("--data", default="mnist", choices=sorted(DATA), help="the input shape and classes (default mnist)")
    p.add_argument("--batch", help="your batch: bundled image indices (0-63 or 0,5,9) or a file holding x and y")
    p.add_argument("--out", default="logs/audit", help="folder for metrics.json and audit.html (default logs/audit)")
    return p


def _indices(spec: str) -> Optional[list[int]]:
    spec = spec.strip()
    match = _RANGE.match(spec)
    if match:
        lo, hi = int(match[1]), int(match[2])
        if hi < lo:
            raise ValueError(f"the batch {spec}: the range ends before it starts; write FIRST-LAST, e.g. 0-63")
        return list(range(lo, hi + 1))
    if re.fullmatch(r"\d+(,\d+)*", spec):
        return [int(i) for i in spec.split(",")]
    return None


def read_batch(spec: str, data: str) -> tuple[Tensor, Tensor]:
    """The client's batch from ``--batch``: bundled indices of ``data`` or a tensor file with ``x`` and ``y``."""
    indices = _indices(spec)
    if indices is not None:
        from leakage.data.datamodule import VictimDataModule
        from leakage.data.sources import Bundled

        secret = VictimDataModule(Bundled(data), indices=indices).load_victims()
        return secret.images.flatten(0, 1), secret.labels.flatten()
    if not Path(spec).suffix:
        raise ValueError(f"the batch {spec!r} is neither bundled indices (0-63, or 0,5,9) nor a .safetensors/.pt file")
    held = read_tensors(spec, "the batch file")
    if not isinstance(held, dict) or not isinstance(held.get("x"), Tensor) or not isinstance(held.get("y"), Tensor):
        raise ValueError(f"the batch file {spec} must hold tensors 'x' [B, *input_shape] and 'y' [B]")
    return held["x"], held["y"]


def main(argv: list[str]) -> int:
    """Run the audit; returns the exit status (1: a check failed). Bad input raises a one-line ``ValueError``."""
    try:
        args = parser().parse_args(argv)
    except argparse.ArgumentError as err:
        raise ValueError(str(err)) from None
    from leakage.engine.models import BUILT_IN, build_model

    if args.model.lower() not in BUILT_IN:
        raise ValueError(f"--model {args.model!r}: choose a built-in ({', '.join(sorted(BUILT_IN))})")
    shape, classes = DATA[args.data]
    model = build_model(args.model, shape, classes)
    pinned = read_state(args.architecture, "the pinned architecture") if args.architecture else model.state_dict()
    received = read_state(args.weights, "the received weights")
    previous = read_state(args.previous, "the previous round's weights") if args.previous else None
    batch = read_batch(args.batch, args.data) if args.batch else None
    try:  # strict: every name and shape as received (no prefix stripped, nothing left out)
        model.load_state_dict(received)
        target = model
    except (RuntimeError, ValueError):  # they do not fit the architecture: the weight checks still run
        target = received
        print(f"note: the received weights do not fit {args.model!r} (see the architecture check): the checks on "
              "your batch are skipped", file=sys.stderr)
    result = audit(target, previous=previous, batch=batch, architecture={k: tuple(v.shape) for k, v in pinned.items()})
    print(result)
    paths = result.write(args.out)
    print(f"wrote {paths['metrics']} and {paths['html']}")
    return result.exit_code
