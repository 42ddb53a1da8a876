"""Trace a run problem by problem, step by step, and replay stopping rules on the trace offline.

A tuning aid for :mod:`leakage.engine.stopping` (``bench/budgets.py --trace``). :class:`Trace` is a Lightning
callback: after every attack step it records, for every problem, the loss the stopping rule sees
(``problem_losses``), its best loss, the SSIM of its best iterate against the victim, and the
objective evaluations L-BFGS has spent on it (the optimizer state's ``func_evals``), plus the
run's CPU time (``time.process_time``); once, the observation's scale ``||observed gradient||^2``
per problem. It writes them to ``path`` (a ``torch.save`` of tensors) when the run ends.

:func:`replay` feeds a trace's losses through :class:`leakage.engine.stopping.StoppingRule` and says, for
each problem, the step its rule stopped it at, its SSIM there and the evaluations it had spent: what
the run with that rule reports and costs, without rerunning it (problems are independent: L-BFGS
gives each the same iterates whether the others run or not, up to float32 rounding).
"""

from __future__ import annotations

import time
from typing import Optional

import torch
from lightning.pytorch import Callback

from leakage.engine.metrics import ssim_per_image
from leakage.engine.optim import BatchedLBFGS
from leakage.engine.stopping import StoppingRule


class Trace(Callback):
    """Record every problem's loss, best loss, SSIM and evaluations after every step into ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: dict[str, list] = {"loss": [], "best": [], "ssim": [], "evals": [], "cpu": []}
        self.scale: Optional[torch.Tensor] = None
        self._cpu0 = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._cpu0 = time.process_time()
        self.scale = sum(o.detach().double().flatten(1).pow(2).sum(1) for o in pl_module.observed())

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        cpu = time.process_time()  # the step's own cost, before this callback's SSIM
        opt = trainer.optimizers[0]
        opt = opt.optimizer if hasattr(opt, "optimizer") else opt
        evals = opt.state["problems"]["func_evals"].clone() if isinstance(opt, BatchedLBFGS) else None
        truth = trainer.datamodule.secret.images[:, 0].float()
        recon = pl_module.reconstruction().detach()[:, 0].float().clamp(0, 1)
        R = pl_module.hparams.restarts
        self.rows["loss"].append(pl_module.problem_losses.detach().double().clone())
        self.rows["best"].append(pl_module.best_losses.detach().double().clone())
        self.rows["ssim"].append(ssim_per_image(recon, truth.repeat_interleave(R, dim=0)))
        self.rows["evals"].append(evals if evals is not None else torch.full_like(self.rows["loss"][-1], len(self.rows["loss"])).long())
        self.rows["cpu"].append(torch.tensor(cpu - self._cpu0))
        self._cpu0 += time.process_time() - cpu  # the callback's own time is not the run's

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save({k: torch.stack(v) for k, v in self.rows.items()} | {"scale": self.scale}, self.path)


def replay(trace: dict, rule: StoppingRule, max_steps: Optional[int] = None) -> dict:
    """Each problem's stop step (1-based; the trace's last step if never stopped), SSIM and evaluations
    there under ``rule``, fed the traced losses (and the observation's scale, for a relative rule)."""
    loss = trace["loss"]
    T = loss.shape[0] if max_steps is None else min(max_steps, loss.shape[0])
    rule.reset()
    scale = trace.get("scale")
    for t in range(T):
        stopped = rule.update(loss[t], scale if rule.stop_relative > 0 else None)
        if bool(stopped.all()):
            break
    at = torch.where(rule.stopped, rule.stopped_at, torch.full_like(rule.stopped_at, T)) - 1
    P = loss.shape[1]
    idx = torch.arange(P)
    return {"step": at + 1, "ssim": trace["ssim"][at, idx], "evals": trace["evals"][at, idx],
            "loss": trace["best"][at, idx], "run_steps": int(at.max()) + 1}


def main(argv: list[str]) -> None:
    """``python bench/budget_trace.py OUT.pt fit ARGS...``: ``leakage fit ARGS`` with :class:`Trace` added."""
    import leakage.cli

    if len(argv) < 2 or argv[1] != "fit":
        raise SystemExit("usage: python bench/budget_trace.py OUT.pt fit [leakage fit arguments]")
    # an instance in the trainer's defaults: LightningCLI adds it to the config's own callbacks
    leakage.cli.TRAINER_DEFAULTS = {**leakage.cli.TRAINER_DEFAULTS, "callbacks": [Trace(argv[0])]}
    leakage.cli.main(argv[1:])


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
