"""The callback that is not the attack itself: it gathers every rank's results, scores them, logs
them to TensorBoard and has the run's artifacts written (:mod:`leakage.reporting.runreport`).

:class:`LeakageReport` is the only code besides the data module that reads the secret victim data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from leakage.data.kinds import ImageKind
from leakage.engine import checks
from leakage.engine.distributed import gather, world_size
from leakage.engine.errors import one_line
from leakage.engine.interrupt import StepInterrupt
from leakage.federated.server import HONEST
from leakage.records import summarize, victim_rows
from leakage.reporting.dashboard import (SETTINGS, figure_png, final_scalars, history_figure, outcomes, overview_layout,
                                         png_array, step_scalars, write_hparams)
from leakage.reporting.runfiles import (RECONSTRUCTIONS, Artifacts, fresh_run_dir, json_text, mark_ended, mark_running,
                                        save_reconstructions)
from leakage.reporting.runreport import run_text, write_run_files
from leakage.reporting.views import summary_markdown, view_of


def _tb(trainer: pl.Trainer) -> Optional[Any]:
    """The TensorBoard writer of the run (rank 0 only)."""
    if not trainer.is_global_zero or not _has_tb(trainer):
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def _has_tb(trainer: pl.Trainer) -> bool:
    """Whether the run logs to TensorBoard (the same answer on every rank)."""
    return any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers)


def _joined(parts: list[Any]) -> Any:
    """Per-rank results (tensors with the victims first, dicts of them, or tuples) joined in rank
    order, which is the victims' order (each rank holds a contiguous shard)."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: _joined([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        return tuple(_joined([p[i] for p in parts]) for i in range(len(first)))
    return torch.cat(parts, dim=0)


class LeakageReport(pl.Callback):
    """Log the attack's progress and write the run's results.

    TensorBoard (with a TensorBoard logger):

    - scalars every ``log_every_n_steps`` steps (and at the first and last): per victim (its best
      restart so far) ``victim_NN/{loss,log10_loss,ssim,psnr,mse,log10_mse}``, and over the victims
      ``attack/reconstructed`` (victims with SSIM >= ``success_ssim`` that did not fail numerically),
      ``attack/median_loss``, ``attack/log10_median_loss`` and ``attack/{ssim,psnr,mse}_mean``;
      a CUSTOM SCALARS overview draws every victim as a line of one chart per metric;
    - the images ``gallery`` (victims and reconstructions with true and recovered label and SSIM,
      failures marked) and ``history`` (every victim's matching loss, log scale) at the first step,
      every ``image_every_n_steps`` steps and at the end;
    - at the end, ``final/*`` scalars (``reconstructed``, ``not_reconstructed``,
      ``numerically_failed``, the means), the ``summary`` text card (outcome, settings, per-victim
      table) and, with ``hparams``, an HPARAMS entry: the attack's settings with its outcome.

    Files, at the end: ``reconstructions.safetensors`` (written before scoring, so that a scoring that
    fails loses no reconstruction: the run is then partial, said in one line), the per-victim table
    printed and saved as ``metrics.csv``, ``metrics.json`` and ``metrics.txt``, ``gallery.png``,
    ``history.png`` and ``report.html`` (one self-contained page).
    While the attack runs the folder holds ``RUNNING``; an interrupted (SIGINT) or failed attack
    writes the table so far with ``"status": "partial"`` in ``metrics.json`` (the rule is
    :mod:`leakage.reporting.runfiles`'). Each file is written atomically; files that cannot be written (a full
    disk) are named in one line on stderr, after the table, and listed in :attr:`unwritten`.

    Args:
        success_ssim: a victim counts as reconstructed at SSIM >= this.
        log_every_n_steps: interval of the scalars.
        image_every_n_steps: interval of the gallery and history images (0: only at the first step
            and at the end).
        save_artifacts: write the table, gallery, history plot and report.html.
        hparams: log the run's settings and outcome to TensorBoard's HPARAMS tab (a sweep turns it
            off in its cells and writes one entry per cell itself).

    Under :class:`leakage.engine.distributed.ShardedDDPStrategy` every rank attacks a shard of the victims:
    at each logging step and at the end every rank's per-victim results are gathered (small CPU
    tensors), so that every rank holds the rows of all victims in their order and rank 0 alone
    writes the scalars, images and files of all of them.

    The artifacts go to the logger's run folder (``logs/<name>/version_N``); without a logger to a
    fresh ``version_N`` folder under ``default_root_dir/logs/leakage`` (the CLI makes that folder
    at start-up, so that ``config.yaml`` lands there too), never over existing files.
    """

    def __init__(
        self,
        success_ssim: float = 0.9,
        log_every_n_steps: int = 10,
        image_every_n_steps: int = 20,
        save_artifacts: bool = True,
        hparams: bool = True,
    ) -> None:
        if log_every_n_steps < 1 or image_every_n_steps < 0:
            raise ValueError("log_every_n_steps must be >= 1 and image_every_n_steps >= 0")
        checks.unit_interval("success_ssim", success_ssim)
        self.success_ssim = success_ssim
        self.log_every_n_steps = log_every_n_steps
        self.image_every_n_steps = image_every_n_steps
        self.save_artifacts = save_artifacts
        self.hparams = hparams
        self.history: list[Tensor] = []  # best matching loss per victim, every step
        self.rows: list[dict] = []
        self.summary: dict[str, float] = {}
        self.run_dir: Optional[Path] = None
        #: the artifacts that could not be written (a full disk): ``leakage fit`` then exits with status 1
        self.unwritten: list[str] = []
        #: why the reconstructions could not be scored (``leakage fit`` then exits with status 1), or None
        self.unscored: Optional[str] = None
        self._unsaved: Optional[str] = None  # why reconstructions.safetensors could not be written
        self._claimed = False  # every rank asked for the run folder (a collective)
        self._started = False  # the run folder is marked RUNNING: the run ends by marking it complete or partial
        self._interrupt = StepInterrupt()  # Ctrl+C stops the attack at a step boundary

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _secret(trainer: pl.Trainer):
        dm = trainer.datamodule
        return getattr(dm, "secret", None) if dm is not None else None

    @staticmethod
    def _current_best(pl_module) -> tuple[Tensor, Tensor, Tensor]:
        """Each victim's best problem so far, its matching loss and whether every restart failed."""
        losses = pl_module.best_losses  # the loss of each problem's reported (best) iterate
        best, failed = pl_module.best_restarts(losses)
        return best, losses[best], failed

    def settings(self, trainer, pl_module) -> dict[str, Any]:
        """The attack's settings, as the summary card, the HPARAMS entry and report.html show them."""
        hp = pl_module.hparams
        dm = trainer.datamodule
        obs = pl_module.observation
        out: dict[str, Any] = {
            # the user's data by its name (a CSV run: the file's), never a default dataset it did not read
            "dataset": getattr(dm, "data_name", getattr(dm, "dataset", None)), "source": getattr(dm, "source", None),
            "victims": pl_module.total_victims if obs is not None else None,
            "batch_size": obs.batch_size if obs is not None else None,
            "steps": trainer.max_steps, "attack": pl_module.describe(),
            "threat_model": obs.threat_model if obs is not None else HONEST,
        }
        for key in ("model", "distance", "optimizer", "lr", "labels", "init", "restarts", "tv_weight"):
            out[key] = hp.get(key)
        out["defenses"] = "; ".join(
            d["defense"] + "(" + ", ".join(f"{k}={v}" for k, v in d.items() if k != "defense") + ")"
            for d in self.defenses_of(trainer)) or "none"
        out["success_ssim"] = self.success_ssim
        return {k: out[k] for k in SETTINGS if out.get(k) is not None}

    def _scalars(self, tb, step: int, losses: Tensor, metrics: Optional[dict], failed: Tensor) -> None:
        """The per-victim and overview scalars at ``step``."""
        scalars = step_scalars(losses, metrics, failed, self._kind.scalar_names(), self.success_ssim)
        for name, value in scalars.items():
            if value is not None:
                tb.add_scalar(name, value, step)

    def _figures(self, secret, recon: Tensor, labels: Tensor, metrics: Optional[dict], failed: Sequence[bool],
                 title: str) -> tuple[bytes, Optional[bytes]]:
        """The gallery and history figures as PNG bytes (no history before the first step)."""
        gallery = view_of(self._kind).figure(
            recon, labels, truth=secret.images if secret is not None else None,
            true_labels=secret.labels if secret is not None else None,
            indices=secret.indices if secret is not None else None, metrics=metrics, failed=failed,
            success=self.success_ssim, title=title)
        history = None
        if self.history:
            done = None
            if metrics is not None:
                done = [bool(metrics["score"][v] >= self.success_ssim) and not failed[v] for v in range(len(failed))]
            history = figure_png(history_figure(torch.stack(self.history).numpy(), done,
                                                title=f"{title}: matching loss" if title else ""))
        return gallery, history

    @staticmethod
    def _log_images(tb, step: int, gallery: Optional[bytes], history: Optional[bytes]) -> None:
        if gallery is not None:
            tb.add_image("gallery", png_array(gallery), step, dataformats="HWC")
        if history is not None:
            tb.add_image("history", png_array(history), step, dataformats="HWC")

    def _outcome_title(self, when: str, metrics: Optional[dict], failed: Tensor) -> str:
        if metrics is None:
            return f"{when}: reconstructions"
        n = int(((metrics["score"] >= self.success_ssim) & ~failed).sum())
        return f"{when}: {n}/{failed.numel()} reconstructed ({self._kind.score_label} >= {self.success_ssim:g})"

    def _claim_run_dir(self, trainer) -> None:
        """The folder of the run's artifacts: the logger's version folder; without a logger a fresh
        one under default_root_dir/logs, never the current folder itself (its files would be
        overwritten). trainer.log_dir is a collective on several processes (rank 0's folder,
        broadcast): every rank calls this, once."""
        if not self.save_artifacts or self._claimed:
            return
        self._claimed = True
        log_dir = trainer.log_dir if trainer.loggers else None
        if trainer.is_global_zero and self.run_dir is None:
            self.run_dir = Path(log_dir) if log_dir else fresh_run_dir(Path(trainer.default_root_dir) / "logs")

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer, pl_module) -> None:
        if world_size(trainer) == 1:
            self._interrupt.install()
        tb = _tb(trainer)
        if tb is not None and pl_module.observation is not None:
            tb.add_custom_scalars(overview_layout(self.success_ssim, pl_module.total_victims, pl_module.observation.kind))
        self._claim_run_dir(trainer)
        if self.save_artifacts and trainer.is_global_zero:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                mark_running(self.run_dir)
            except OSError as err:  # before the attack: the run stops here, in one line
                raise ValueError(f"cannot write to the run folder {self.run_dir}: {err.strerror or err}") from None
            self._started = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """An interrupted (SIGINT) or failed attack: its folder keeps the table so far, marked partial.

        On one process the per-victim rows are each victim's best so far; on several (a gather is a
        collective the other ranks may not reach) rank 0 writes the marker only."""
        self._interrupt.restore()
        if not self._started or self.rows:
            return
        self._started = False
        if isinstance(exception, KeyboardInterrupt):
            reason = f"interrupted (SIGINT) at step {trainer.global_step} of {trainer.max_steps}"
        else:
            reason = f"failed at step {trainer.global_step} of {trainer.max_steps}: {one_line(exception)}"
        try:
            if world_size(trainer) == 1 and pl_module.best_losses is not None:
                self._finish(trainer, pl_module, partial=reason)
                return
        except Exception as err:  # noqa: BLE001 - the run is failing already: its own error is the one to raise
            reason += f" (the table so far could not be made: {one_line(err)})"
        files = Artifacts(self.run_dir)
        files.write("metrics.txt", f"partial run: {reason}; no table\n")
        files.write("metrics.json", json_text({"status": "partial", "reason": reason, "step": trainer.global_step,
                                               "victims": []}, indent=2))
        mark_ended(self.run_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._interrupt.check()  # a Ctrl+C during the step stops the attack here, its state whole
        if pl_module.best_losses is None:
            return
        best, best_loss, failed = self._current_best(pl_module)
        self.history.append(best_loss.detach().cpu())
        step = trainer.global_step
        # decided alike on every rank (the step, the budget, the shared stop decision): every rank
        # takes part in the gather below, rank 0 writes
        if not _has_tb(trainer) or 0 < trainer.max_steps <= step or trainer.should_stop:
            return  # the end of the attack logs its last step
        scalars_due = step == 1 or step % self.log_every_n_steps == 0
        images_due = step == 1 or bool(self.image_every_n_steps and step % self.image_every_n_steps == 0)
        if not (scalars_due or images_due):
            return
        local = (best_loss.detach().cpu(), pl_module.reconstruction()[best].cpu(), failed.cpu(),
                 pl_module.recovered_labels()[best].cpu() if images_due else torch.zeros(len(best)))
        best_loss, recon, failed, labels = _joined(gather(trainer, local))
        tb = _tb(trainer)
        if tb is None:
            return
        secret = self._secret(trainer)
        self._kind = pl_module.kind
        metrics, _ = self._evaluate(recon, secret)  # a failure here is the end's to report: logged unscored
        if scalars_due:
            self._scalars(tb, step, best_loss, metrics, failed)
        if images_due:
            self._log_images(tb, step, *self._figures(secret, recon, labels, metrics, failed.tolist(),
                                                     self._outcome_title(f"step {step}", metrics, failed)))

    def on_train_end(self, trainer, pl_module) -> None:
        self._interrupt.restore()
        self._finish(trainer, pl_module)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._interrupt.restore()  # however the fit ended

    def _finish(self, trainer, pl_module, partial: Optional[str] = None) -> None:
        """The per-victim results at the current step and the run's report (``partial``: why the
        attack did not finish)."""
        evaluation = pl_module.final_evaluation()
        result = pl_module.results(evaluation)
        best = result["best"]
        R = pl_module.hparams.restarts
        local = {
            "recon": result["recon"],
            "labels": result["labels"],
            "evaluation": {k: v[best].cpu() for k, v in evaluation.items()},
            "restart": best.cpu() % R,
            "failed": result["failed"],
            "exact": pl_module.exact()[best.cpu()],
            # [V, steps]: every step's best loss of each victim of this rank
            "history": (torch.stack(self.history, dim=1) if self.history
                        else torch.zeros(len(best), 0)),
        }
        # every rank's victims, in order, on every rank (one process: its own)
        if result["entropy"] is not None:
            local["entropy"] = result["entropy"]
        joined = _joined(gather(trainer, local))
        recon, labels = joined["recon"], joined["labels"]
        self.history = list(joined["history"].t())
        secret = self._secret(trainer)
        self._kind = pl_module.kind
        # the reconstructions reach the run folder before anything reads the secret: a scoring that
        # fails (memory, anything) loses none of them
        if partial is None:
            self._claim_run_dir(trainer)
        saved = self._save_reconstructions(trainer, pl_module, joined)
        metrics, error = self._evaluate(recon, secret, joined.get("entropy"))
        if error is not None:
            self.unscored = f"scoring failed: {error}; " + (
                f"the reconstructions are saved in {self.run_dir / saved}" if saved else "the reconstructions were not saved")
            partial = self.unscored if partial is None else f"{partial}; {self.unscored}"
        elif metrics is not None and saved:  # the matching joins the saved file: which slot is which true sample
            self._save_reconstructions(trainer, pl_module, joined, metrics["perm"])
        self.rows = victim_rows(
            recon, labels, joined["evaluation"], joined["restart"], joined["failed"], metrics,
            secret.labels if secret is not None else None, secret.indices if secret is not None else None,
            kind=self._kind)
        self.summary = summarize(self.rows, self.success_ssim)
        self.summary["entries_per_unknown"] = pl_module.observation.entries_per_unknown
        self.summary["exact"] = int(joined["exact"].sum())  # victims solved exactly by construction
        self.threat_model = pl_module.observation.threat_model  # what a sweep's table names first
        self._report(trainer, pl_module, recon, labels, metrics, partial)

    def _evaluate(self, recon: Tensor, secret, entropy: Optional[Tensor] = None) -> tuple[Optional[dict], Optional[str]]:
        """The kind's metrics of ``recon`` against the secret (None without one), and the one line
        saying why scoring failed (None when it did not)."""
        if secret is None:
            return None, None
        try:
            return self._kind.evaluate(recon, secret.images, entropy), None
        except Exception as err:  # noqa: BLE001 - memory or anything else: the run keeps its reconstructions
            return None, f"{type(err).__name__}: {one_line(err)}"

    def _save_reconstructions(self, trainer, pl_module, joined: dict, perm: Optional[Tensor] = None) -> Optional[str]:
        """Write ``reconstructions.safetensors`` (each victim's reconstruction, labels, best restart,
        failed and exact flags, pooled entropy; with ``perm`` once scored) into the run folder; the
        file's name, or None when it was not written (no run folder, not rank 0, or the disk refused:
        named with the other unwritten files)."""
        if not self.save_artifacts or not trainer.is_global_zero or self.run_dir is None:
            return None
        tensors = {"recon": joined["recon"], "labels": joined["labels"], "best_restart": joined["restart"],
                   "failed": joined["failed"], "exact": joined["exact"]}
        if joined.get("entropy") is not None:
            tensors["entropy"] = joined["entropy"]
        if perm is not None:
            tensors["perm"] = perm
        obs = pl_module.observation
        meta = {"kind": json_text(self._kind.describe()), "threat_model": obs.threat_model if obs is not None else HONEST,
                "step": str(trainer.global_step)}
        self._unsaved = save_reconstructions(self.run_dir, tensors, meta)
        return None if self._unsaved else RECONSTRUCTIONS

    @property
    def _kind(self):
        return self.__dict__.get("_data_kind") or ImageKind()

    @_kind.setter
    def _kind(self, kind) -> None:
        self.__dict__["_data_kind"] = kind

    @property
    def kind(self):
        """The kind of data the report scored (images until a run sets it)."""
        return self._kind

    # --------------------------------------------------------------- outputs
    @staticmethod
    def defenses_of(trainer) -> list[dict]:
        """The client-side defenses applied to the observation, in order."""
        return [d.describe() for d in getattr(trainer.datamodule, "defenses_applied", [])]

    def _report(self, trainer, pl_module, recon, labels, metrics, partial: Optional[str] = None) -> None:
        s = self.summary
        secret = self._secret(trainer)
        details = view_of(self._kind).details(recon, secret.images if secret is not None else None, metrics)
        text = run_text(pl_module, self.rows, s, self.success_ssim, self._kind, self.defenses_of(trainer),
                        getattr(trainer.datamodule, "data_name", None), details["text"], partial, self.unscored)
        if partial is None:
            self._claim_run_dir(trainer)
        if self.save_artifacts and trainer.is_global_zero:
            text += f"\nrun folder: {self.run_dir}"
        if trainer.is_global_zero:
            print("\n" + text, flush=True)
        tb = _tb(trainer)
        if tb is None and not (self.save_artifacts and trainer.is_global_zero):
            return
        step = trainer.global_step
        failed = [r["status"] == "failed" for r in self.rows]
        settings = self.settings(trainer, pl_module)
        gallery, history = self._figures(self._secret(trainer), recon, labels, metrics, failed,
                                         self._outcome_title(f"end (step {step})", metrics, torch.tensor(failed)))
        if tb is not None:
            losses = torch.tensor([r["final_loss"] for r in self.rows])
            self._scalars(tb, step, losses, metrics, torch.tensor(failed))
            finals = final_scalars(s)
            for key, value in finals.items():
                tb.add_scalar(f"final/{key}", value, step)
            self._log_images(tb, step, gallery, history)
            tb.add_text("summary", summary_markdown(self.rows, s, self.success_ssim, settings, self._kind), step)
            if details["markdown"]:  # the threat model first, as on every card
                tb.add_text("rows", f"**Threat model: {settings.get('threat_model', HONEST)}.**\n\n{details['markdown']}", step)
            if self.hparams:
                write_hparams(tb, settings, [f"final/{k}" for k in outcomes(self._kind)])
            tb.flush()
        if not self.save_artifacts or not trainer.is_global_zero:
            return
        self.unwritten = write_run_files(self.run_dir, self.rows, s, self.success_ssim, text, gallery, history, settings,
                                         self.defenses_of(trainer), self._kind, partial, step, details["html"],
                                         self.unscored, self._unsaved)
        self._started = False
