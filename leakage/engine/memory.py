"""The memory an attack needs, estimated before its problems are allocated.

An attack holds, for each of its ``P = victims x restarts`` problems, the dummies and their
gradients, the observed gradients (repeated per restart), the optimizer's state (L-BFGS: a ring of
``2 x history_size`` D-vectors, their inner products and a few D-vectors; Adam: two D-vectors) and,
while a problem is evaluated, its share of the objective's double-backward graph. :func:`check_memory`
refuses, with the number and the setting to change, an attack whose estimate is more than the
machine has free (host memory from ``/proc/meminfo``, a GPU's from ``torch.cuda.mem_get_info``).
Measured on CIFAR-10 LeNet at history 100 (docs/benchmarks.md, "Many problems at once"): about 3 MiB per
problem, which the estimate puts at 2.9 MiB.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
from torch import Tensor, nn

MiB, GiB = 2**20, 2**30


def lbfgs_state_bytes(problems: int, dims: int, history: int, element: int = 4) -> int:
    """What :class:`leakage.engine.optim.BatchedLBFGS` allocates for ``problems`` problems of ``dims``
    variables each: the history ``[P, 2H, D]``, ``SY`` and ``YY`` ``[P, H, H]``, ``ro`` ``[P, H]``,
    the direction and previous gradient ``[P, D]``, and per-problem scalars."""
    floats = 2 * history * dims + 2 * history * history + history + 2 * dims + 2  # + t, H_diag
    longs = 5  # n_iter, func_evals, ptr, num_old; prev_loss is float64
    return problems * (floats * element + longs * 8 + 2)  # + failed, stalled (bool)


def activations_per_example(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Elements of every leaf module's output for one input (the forward's activations)."""
    count = 0

    def hook(module, inputs, output):
        nonlocal count
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, Tensor):
                count += t.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    param = next(model.parameters(), None)
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=param.device if param is not None else None,
                              dtype=param.dtype if param is not None else None))
    except Exception:  # noqa: BLE001 - a model that cannot take the input is refused elsewhere, with its reason
        return 0
    finally:
        for h in handles:
            h.remove()
    return count


def estimate(model: nn.Module, *, victims: int, restarts: int, batch_size: int, input_shape: tuple[int, ...],
             num_classes: int, joint_labels: bool, optimizer: str, history_size: int,
             problems_per_chunk: Optional[int] = None, local_steps: int = 1, element: int = 4) -> dict[str, int]:
    """Bytes an attack needs, by part: ``victims`` (their images and updates), ``dummies`` (values
    and gradients), ``observed`` (the observed gradients, one copy per problem), ``optimizer`` and
    ``objective`` (the graph of the problems evaluated at once: all, or ``problems_per_chunk``)."""
    P = victims * restarts
    pixels = batch_size * math.prod(input_shape)
    dims = pixels + (batch_size * num_classes if joint_labels else 0)
    params = sum(p.numel() for p in model.parameters())
    if optimizer == "lbfgs":
        opt = lbfgs_state_bytes(P, dims, history_size, element)
    else:  # Adam and signed Adam: exp_avg and exp_avg_sq
        opt = P * 2 * dims * element
    at_once = P if problems_per_chunk is None else min(P, problems_per_chunk)
    # the double backward keeps each problem's per-example gradient and its graph: a few copies of the
    # parameters and of the activations, once per local step for FedAvg
    graph = local_steps * (3 * params + 4 * batch_size * activations_per_example(model, input_shape)) * element
    return {
        "victims": victims * (pixels + params) * element,
        "dummies": P * 2 * dims * element,
        "observed": P * params * element,
        "optimizer": opt,
        "objective": at_once * graph,
    }


def host_available() -> int:
    """Bytes of host memory available now: MemAvailable from /proc/meminfo, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available(device: torch.device) -> tuple[int, str]:
    """Bytes free where the problems live, and what that is (for the message)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"GPU {device}"
    return host_available(), "this machine"


def _size(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


#: what shrinks each part of the estimate
_ADVICE = {
    "victims": "lower --data.num_victims",
    "dummies": "lower --data.num_victims or --model.dummies.restarts",
    "observed": "lower --data.num_victims or --model.dummies.restarts",
    "optimizer": "lower --model.optimizer.history_size, --data.num_victims or --model.dummies.restarts",
    "objective": "set --model.objective.problems_per_chunk N to evaluate fewer problems at once",
}


def check_memory(parts: dict[str, int], *, victims: int, restarts: int, device: torch.device,
                 processes: int = 1, optimizer: str = "lbfgs") -> None:
    """Refuse an attack whose estimated memory (``parts``, per process; ``processes`` of them share
    the device) is more than ``device`` has free, naming the number and the setting to change."""
    need = sum(parts.values()) * processes
    free, where = available(device)
    if need <= free:
        return
    largest = max(parts, key=parts.get)
    advice = _ADVICE[largest] if (largest, optimizer) != ("optimizer", "adam") else _ADVICE["dummies"]
    problems = victims * restarts
    per_problem = (parts["dummies"] + parts["observed"] + parts["optimizer"]) / max(problems, 1)
    share = f" in each of {processes} processes" if processes > 1 else ""
    raise ValueError(
        f"the attack needs about {_size(need)} for {problems} problems{share} ({victims} victims x "
        f"{restarts} restarts, {per_problem / MiB:.2f} MiB each; most of it the {largest}), more than the "
        f"{_size(free)} {where} has free: {advice}"
    )

def check_attack(module: nn.Module, victims: int, batch_size: int, local_steps: int = 1, trainer=None) -> None:
    """:func:`check_memory` for a :class:`leakage.attacks.gradient_inversion.GradientInversion` about to attack ``victims``
    updates of ``batch_size`` examples in each process, on ``trainer``'s device and precision (the
    CPU and float32 without one); the processes on one CPU share its memory."""
    hp = module.hparams
    device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
    element = 8 if trainer is not None and str(trainer.precision).startswith("64") else 4
    processes = trainer.num_devices if trainer is not None and device.type == "cpu" else 1
    parts = estimate(module.target, victims=victims, restarts=hp.restarts, batch_size=batch_size,
                     input_shape=tuple(hp.input_shape), num_classes=hp.num_classes,
                     joint_labels=hp.labels == "joint", optimizer=hp.optimizer,
                     history_size=getattr(module.optimizer, "history_size", 0),
                     problems_per_chunk=module.problems_at_once(device), local_steps=local_steps, element=element)
    check_memory(parts, victims=victims, restarts=hp.restarts, device=device, processes=processes,
                 optimizer="adam" if hp.optimizer != "lbfgs" else "lbfgs")
