"""Attacks sharded over processes, GPUs and nodes with Lightning's own distributed launching.

The problems of an attack are independent: they need no communication while they are solved. So
``leakage fit --trainer.strategy ddp --trainer.devices N`` (and ``--trainer.num_nodes M`` under
torchrun or SLURM) runs :class:`ShardedDDPStrategy`: Lightning launches the processes and sets up
the process group as for DDP, then every rank attacks a contiguous shard of the victims
(:func:`victim_shard`, taken after the client-side defenses ran on all victims) and
:class:`leakage.reporting.callbacks.LeakageReport` gathers every rank's per-victim results (small CPU
tensors) so that rank 0 writes the one set of artifacts, in the victims' order.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy, Strategy

#: ``--trainer.strategy`` names that ``leakage fit`` runs as :class:`ShardedDDPStrategy` (with
#: Lightning's start method of that name)
DDP_NAMES = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}
#: environment variables that carry a process's rank under Lightning's launcher, torchrun or SLURM
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


class ShardedDDPStrategy(DDPStrategy):
    """Lightning's DDP launching and process group, without DistributedDataParallel.

    The module is deliberately not wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`:
    DDP assumes replicated weights, broadcasts rank 0's parameters at construction and averages
    gradients across ranks at every backward. The attack's parameters are its dummy images and
    labels, which are per-rank state (each rank holds its own shard of problems, and uneven shards
    even differ in shape); broadcasting or averaging them would overwrite every rank's problems with
    rank 0's or mix unrelated reconstructions. Each rank therefore optimizes its own problems alone;
    the only communication is the report's gather of small per-victim results and the all-reduced
    "every problem is done" decision (so that all ranks stop at the same step).

    Everything else is DDP's: ``start_method`` ``popen`` (Lightning re-runs the command once per
    device), ``spawn``/``fork``, torchrun and SLURM environments, ``num_nodes``, gloo on the CPU and
    nccl on GPUs.
    """

    strategy_name = "leakage_ddp"
    _exit_hook = False

    def setup_environment(self) -> None:
        super().setup_environment()
        if not ShardedDDPStrategy._exit_hook:
            # Lightning destroys an nccl process group at exit, a gloo one not: left to the
            # interpreter's shutdown, gloo's threads sometimes abort a process as it exits
            # ("terminate called without an active exception", seen on 2 CPU processes)
            atexit.register(_destroy_process_group)
            ShardedDDPStrategy._exit_hook = True

    def configure_ddp(self) -> None:
        # no DistributedDataParallel wrapper and no DDP communication hooks: see the class docstring
        pass


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_strategy(strategy: Strategy) -> None:
    """Refuse, in one line, a multi-process strategy that would treat the dummies as replicated weights
    (the attack runs on one process, or sharded)."""
    sharded = isinstance(strategy, (SingleDeviceStrategy, ShardedDDPStrategy)) or strategy.world_size == 1
    if not sharded:
        name = getattr(strategy, "strategy_name", None) or type(strategy).__name__
        raise ValueError(
            f"strategy {name!r} would average the attack's dummies across processes: use --trainer.strategy ddp "
            "(leakage.engine.distributed.ShardedDDPStrategy: each process attacks its own shard of the victims)"
        )


def victim_shard(num_victims: int, rank: int, world_size: int) -> range:
    """The victims of ``rank``: a contiguous slice, sizes differing by at most one (first ranks
    larger; a rank may get none when there are fewer victims than ranks)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
    base, extra = divmod(num_victims, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def launched_as_rank_zero() -> bool:
    """Whether this process may be global rank 0, judged from the launcher's environment (before
    the Trainer has set up its ranks): False when any rank variable is set to a non-zero value."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) != 0:
            return False
    return True


def world_size(trainer: "pl.Trainer") -> int:
    return trainer.world_size if dist.is_available() and dist.is_initialized() else 1


def gather(trainer: "pl.Trainer", obj: Any) -> list[Any]:
    """Every rank's ``obj`` (small, CPU), in rank order, on every rank; ``[obj]`` in one process.

    A collective: every rank must call it at the same point. Objects travel pickled between the
    processes of this one run (never read from a file)."""
    if world_size(trainer) == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_done(trainer: "pl.Trainer", done: bool) -> bool:
    """True when ``done`` holds on every rank (one all-reduce); the same answer on every rank."""
    if world_size(trainer) == 1:
        return done
    return bool(trainer.strategy.reduce_boolean_decision(done, all=True))

