"""Callbacks that are not the attack itself: metrics, TensorBoard logging and run artifacts.

:class:`LeakageReport` is the only code besides the data module that reads the secret victim data.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchvision.utils import make_grid

from .metrics import label_accuracy, reconstruction_metrics

COLUMNS = (
    "victim", "indices", "true_labels", "recovered_labels", "label_acc", "ssim", "psnr", "mse",
    "grad_l2", "grad_cosine", "final_loss", "best_restart", "status", "ssim_images",
)


def _tb(trainer: pl.Trainer) -> Optional[Any]:
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def fresh_run_dir(base: Path, name: str = "leakage") -> Path:
    """A new, empty ``base/name/version_N`` folder (the next free N, created atomically)."""
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


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the per-victim results."""
    shown = ("victim", "indices", "true_labels", "recovered_labels", "ssim", "psnr", "mse", "grad_l2", "status")

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else (f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.3f}")
        if isinstance(v, list):
            return ",".join(str(i) for i in v)
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in shown] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(shown)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(shown, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def summarize(rows: list[dict], success_ssim: float) -> dict[str, float]:
    """Aggregate numbers over victims: success count, means of the metrics, label accuracy."""
    n = len(rows)
    ok = [r for r in rows if r["status"] != "failed"]
    have_images = any(not math.isnan(r["ssim"]) for r in rows)

    def mean(key: str) -> float:
        vals = [r[key] for r in ok if not math.isnan(r[key])]
        return sum(vals) / len(vals) if vals else float("nan")

    out = {"victims": n, "failed": n - len(ok), "grad_l2_mean": mean("grad_l2")}
    if have_images:
        out.update(
            success=sum(r["ssim"] >= success_ssim for r in ok),
            # a failed victim counts as SSIM 0 (nothing reliably recovered); PSNR and MSE have no
            # such value, so their means are over the victims that did not fail
            ssim_mean=sum(r["ssim"] for r in ok if not math.isnan(r["ssim"])) / n,
            psnr_mean=mean("psnr"),
            mse_mean=mean("mse"),
            label_acc=sum(r["label_acc"] for r in rows) / n,
            # batches: every image counts; the images of a failed victim count as not reconstructed
            images=sum(len(r.get("ssim_images") or [0]) for r in rows),
            image_success=sum(sum(x >= success_ssim for x in (r.get("ssim_images") or [r["ssim"]])) for r in ok),
        )
    return out


def victim_rows(recon: Tensor, labels: Tensor, evaluation: dict[str, Tensor], best_restart: Tensor,
                failed: Tensor, metrics: Optional[dict[str, Tensor]] = None, true_labels: Optional[Tensor] = None,
                indices: Optional[list[list[int]]] = None) -> list[dict]:
    """One result row per victim (the columns of ``metrics.csv``).

    ``recon`` ``[V, B, C, H, W]`` and ``labels`` ``[V, B]`` are each victim's best reconstruction;
    ``evaluation`` holds its ``loss``, ``grad_l2`` and ``grad_cosine`` ``[V]``; ``failed`` ``[V]``
    marks victims whose every restart failed numerically. ``metrics`` (from
    :func:`leakage.metrics.reconstruction_metrics`), ``true_labels`` and ``indices`` come from the
    secret and are left out (NaN, empty) when the victims' data is unknown.
    """
    acc = label_accuracy(labels, true_labels) if true_labels is not None else None
    rows = []
    for v in range(recon.shape[0]):
        bad = bool(failed[v]) or not bool(torch.isfinite(recon[v]).all())
        rows.append({
            "victim": v,
            "indices": list(indices[v]) if indices is not None else [],
            "true_labels": true_labels[v].tolist() if true_labels is not None else [],
            "recovered_labels": labels[v].tolist(),
            "label_acc": float(acc[v]) if acc is not None else float("nan"),
            "ssim": float(metrics["ssim"][v]) if metrics is not None else float("nan"),
            "psnr": float(metrics["psnr"][v]) if metrics is not None else float("nan"),
            "mse": float(metrics["mse"][v]) if metrics is not None else float("nan"),
            "grad_l2": float(evaluation["grad_l2"][v]),
            "grad_cosine": float(evaluation["grad_cosine"][v]),
            "final_loss": float(evaluation["loss"][v]),
            "best_restart": int(best_restart[v]),
            "status": "failed" if bad else "ok",
            # each victim image's SSIM against its matched reconstruction (B > 1: after assignment)
            "ssim_images": [float(x) for x in metrics["ssim_images"][v]] if metrics is not None else [],
        })
    return rows


class LeakageReport(pl.Callback):
    """Log the attack's progress and write the run's results.

    During the attack: the matching loss and, for every victim's currently best restart, SSIM,
    PSNR and MSE as TensorBoard scalars (``victim_NN/...``) every ``log_every_n_steps`` steps, and
    an image grid (victims above, reconstructions below) every ``image_every_n_steps``.

    At the end: a per-victim table printed and saved as ``metrics.csv`` and ``metrics.json``, a
    ``gallery.png`` and a ``history.png`` in the run's log folder, and ``final/...`` scalars.

    Args:
        success_ssim: a victim counts as reconstructed at SSIM >= this.
        log_every_n_steps: interval of the per-victim scalars.
        image_every_n_steps: interval of the image grids (0: only at the end).
        save_artifacts: write the table, gallery and history plot.

    The artifacts go to the logger's run folder (``logs/<name>/version_N``); without a logger to a
    fresh ``version_N`` folder under ``default_root_dir/logs/leakage`` (the CLI makes that folder
    at start-up, so that ``config.yaml`` lands there too), never over existing files.
    """

    def __init__(
        self,
        success_ssim: float = 0.9,
        log_every_n_steps: int = 10,
        image_every_n_steps: int = 50,
        save_artifacts: bool = True,
    ) -> None:
        if log_every_n_steps < 1 or image_every_n_steps < 0:
            raise ValueError("log_every_n_steps must be >= 1 and image_every_n_steps >= 0")
        self.success_ssim = success_ssim
        self.log_every_n_steps = log_every_n_steps
        self.image_every_n_steps = image_every_n_steps
        self.save_artifacts = save_artifacts
        self.history: list[Tensor] = []  # best matching loss per victim, every step
        self.rows: list[dict] = []
        self.summary: dict[str, float] = {}
        self.run_dir: Optional[Path] = None

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _secret(trainer: pl.Trainer):
        dm = trainer.datamodule
        return getattr(dm, "secret", None) if dm is not None else None

    def _current_best(self, pl_module) -> tuple[Tensor, Tensor]:
        losses = pl_module.problem_losses
        best, _ = pl_module.best_restarts(losses)
        return best, losses.view(-1, pl_module.hparams.restarts).gather(
            1, (best % pl_module.hparams.restarts).view(-1, 1)).squeeze(1)

    def _grid(self, truth: Tensor, recon: Tensor, perm: Tensor) -> Tensor:
        recon = torch.stack([recon[v][perm[v]] for v in range(recon.shape[0])])
        images = torch.cat([truth.flatten(0, 1), recon.detach().cpu().clamp(0, 1).flatten(0, 1)])
        return make_grid(images, nrow=truth.shape[0] * truth.shape[1], padding=1, pad_value=1.0)

    # ------------------------------------------------------------------ hooks
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.problem_losses is None:
            return
        best, best_loss = self._current_best(pl_module)
        self.history.append(best_loss.detach().cpu())
        step = trainer.global_step
        tb = _tb(trainer)
        if tb is None or (step % self.log_every_n_steps and step != 1):
            return
        scalars = {f"victim_{v:02d}/loss": float(best_loss[v]) for v in range(best.numel())}
        secret = self._secret(trainer)
        if secret is not None:
            recon = pl_module.dummy_data.detach()[best].cpu()
            m = reconstruction_metrics(recon, secret.images)
            for v in range(best.numel()):
                for key in ("ssim", "psnr", "mse"):
                    scalars[f"victim_{v:02d}/{key}"] = float(m[key][v])
            for key in ("ssim", "psnr", "mse"):
                scalars[f"attack/{key}_mean"] = float(torch.nan_to_num(m[key]).mean())
            if self.image_every_n_steps and step % self.image_every_n_steps == 0:
                tb.add_image("reconstruction", self._grid(secret.images, recon, m["perm"]), step)
        for name, value in scalars.items():
            tb.add_scalar(name, value, step)

    def on_train_end(self, trainer, pl_module) -> None:
        evaluation = pl_module.final_evaluation()
        best, victim_failed = pl_module.best_restarts(evaluation["loss"])
        best_cpu = best.cpu()
        recon = pl_module.dummy_data.detach()[best].cpu()
        labels = pl_module.recovered_labels()[best].cpu()
        secret = self._secret(trainer)
        R = pl_module.hparams.restarts
        metrics = reconstruction_metrics(recon, secret.images) if secret is not None else None
        self.rows = victim_rows(
            recon, labels, {k: v[best] for k, v in evaluation.items()}, best_cpu % R, victim_failed, metrics,
            secret.labels if secret is not None else None, secret.indices if secret is not None else None)
        self.summary = summarize(self.rows, self.success_ssim)
        self.summary["entries_per_unknown"] = pl_module.observation.entries_per_unknown
        self._report(trainer, pl_module, recon, labels, metrics)

    # --------------------------------------------------------------- outputs
    @staticmethod
    def defenses_of(trainer) -> list[dict]:
        """The client-side defenses applied to the observation, in order."""
        return [d.describe() for d in getattr(trainer.datamodule, "defenses_applied", [])]

    def _report(self, trainer, pl_module, recon, labels, metrics) -> None:
        s = self.summary
        lines = [f"defense {i + 1}: {d['defense']} " + ", ".join(f"{k}={v}" for k, v in d.items() if k != "defense")
                 for i, d in enumerate(self.defenses_of(trainer))]
        text = "\n".join(lines + [format_table(self.rows)])
        if "success" in s:
            psnr = "n/a" if math.isnan(s["psnr_mean"]) else f"{s['psnr_mean']:.2f} dB"
            text += (
                f"\nreconstructed (SSIM >= {self.success_ssim}): {s['success']}/{s['victims']}  "
                f"mean SSIM {s['ssim_mean']:.3f}  mean PSNR {psnr}  "
                f"label accuracy {100 * s['label_acc']:.1f}%  failed {s['failed']}"
            )
            if s["images"] > s["victims"]:
                text += f"\nimages reconstructed (SSIM >= {self.success_ssim}): {s['image_success']}/{s['images']}"
        else:
            text += f"\nno victim images (attacking captured gradients): mean gradient L2 {s['grad_l2_mean']:.3g}"
        text += f"\ngradient entries per unknown input value: {s['entries_per_unknown']:.2f}"
        if s["failed"]:
            text += (f"\n{s['failed']} of {s['victims']} victims failed numerically: every restart's matching loss "
                     "or gradient became NaN or infinite (status 'failed')")
        if self.save_artifacts and trainer.is_global_zero:
            if self.run_dir is None:
                # the logger's version folder; without a logger a fresh one under default_root_dir/logs,
                # never the current folder itself (its files would be overwritten)
                self.run_dir = (Path(trainer.log_dir) if trainer.loggers and trainer.log_dir
                                else fresh_run_dir(Path(trainer.default_root_dir) / "logs"))
            text += f"\nrun folder: {self.run_dir}"
        if trainer.is_global_zero:
            print("\n" + text, flush=True)
        tb = _tb(trainer)
        step = trainer.global_step
        if tb is not None:
            for key, value in s.items():
                if isinstance(value, (int, float)) and not math.isnan(float(value)):
                    tb.add_scalar(f"final/{key}", float(value), step)
            secret = self._secret(trainer)
            if secret is not None and metrics is not None:
                tb.add_image("reconstruction", self._grid(secret.images, recon, metrics["perm"]), step)
            tb.flush()
        if not self.save_artifacts or not trainer.is_global_zero:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
        with open(self.run_dir / "metrics.json", "w") as f:
            json.dump({"summary": s, "success_ssim": self.success_ssim, "defenses": self.defenses_of(trainer),
                       "victims": self.rows}, f, indent=2, default=float)
        (self.run_dir / "metrics.txt").write_text(text + "\n")
        self._plots(trainer, recon, labels, metrics)

    def _plots(self, trainer, recon, labels, metrics) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        secret = self._secret(trainer)
        V, B = recon.shape[:2]
        n = V * B
        cols = min(n, 10)
        blocks = math.ceil(n / cols)
        rows = 2 if secret is not None else 1
        fig, axes = plt.subplots(rows * blocks, cols, figsize=(1.3 * cols, 1.55 * rows * blocks), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for i in range(n):
            v, b = divmod(i, B)
            blk, c = divmod(i, cols)
            rb = metrics["perm"][v][b] if metrics is not None else b
            img = recon[v, rb].clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
            ax_r = axes[rows * blk + rows - 1, c]
            ax_r.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            title = f"rec {int(labels[v, rb])}"
            if metrics is not None:
                title += f" {float(metrics['ssim_images'][v, b]):.2f}"
            ax_r.set_title(title, fontsize=7)
            if secret is not None:
                truth = secret.images[v, b].permute(1, 2, 0).squeeze(-1).numpy()
                ax_t = axes[rows * blk, c]
                ax_t.imshow(truth, cmap="gray" if truth.ndim == 2 else None, vmin=0, vmax=1)
                ax_t.set_title(f"#{secret.indices[v][b]} label {int(secret.labels[v, b])}", fontsize=7)
        fig.suptitle("victims (top) and reconstructions (below): label, SSIM", fontsize=8)
        fig.tight_layout()
        fig.savefig(self.run_dir / "gallery.png", dpi=120)
        plt.close(fig)

        if self.history:
            hist = torch.stack(self.history).numpy()
            fig, ax = plt.subplots(figsize=(6, 4))
            for v in range(hist.shape[1]):
                ax.plot(range(1, len(hist) + 1), hist[:, v], lw=0.8, label=f"victim {v}" if hist.shape[1] <= 10 else None)
            ax.set_yscale("log")
            ax.set_xlabel("attack step")
            ax.set_ylabel("gradient-matching loss (best restart)")
            if hist.shape[1] <= 10:
                ax.legend(fontsize=6)
            fig.tight_layout()
            fig.savefig(self.run_dir / "history.png", dpi=120)
            plt.close(fig)
