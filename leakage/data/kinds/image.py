"""Images: the dummy is pixels ``[B, C, H, W]`` (optionally boxed into the data range), the prior
total variation, matching and scoring by SSIM (:mod:`leakage.engine.metrics`), shown as a gallery."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from leakage.engine.losses import total_variation
from leakage.engine.metrics import reconstruction_metrics
from leakage.data.kinds.base import DataKind


class ImageKind(DataKind):
    name = "image"
    records = "images"
    score_label = "SSIM"
    score_name = "ssim"
    success_unit = "images"  # every image of a batch is scored on its own
    priors = ("tv_weight", "bn_weight")
    summary_metrics = (("mse", "MSE", ".4f"), ("ssim", "SSIM", ".3f"), ("psnr", "PSNR", ".2f"))
    headline_metrics = ("ssim", "psnr")
    #: ``ssim_images``: each image's SSIM against its matched reconstruction (a batch: after assignment)
    columns = ("ssim", "psnr", "mse", "ssim_images")

    def __init__(self, sample_shape: tuple[int, ...] = (3, 32, 32), data_range: tuple[float, float] = (0.0, 1.0),
                 metric_range: Optional[float] = None):
        super().__init__(sample_shape)
        self.data_range = (float(data_range[0]), float(data_range[1]))
        #: the value range SSIM and PSNR use (default the width of ``data_range``)
        self.metric_range = self.data_range[1] - self.data_range[0] if metric_range is None else float(metric_range)

    def initial(self, batch_size: int, init: str, generator: torch.Generator) -> Tensor:
        lo, hi = self.data_range
        shape = (batch_size, *self.sample_shape)
        if init == "randn":
            return torch.randn(shape, generator=generator)
        if init == "uniform":
            return lo + (hi - lo) * torch.rand(shape, generator=generator)
        return torch.full(shape, (lo + hi) / 2)

    def project_(self, dummy: Tensor) -> None:
        dummy.clamp_(*self.data_range)

    def prior(self, dummy: Tensor, x: Tensor, weights: dict[str, float]) -> Optional[Tensor]:
        tv = weights.get("tv_weight", 0.0)
        return tv * total_variation(x) if tv > 0 else None

    def combine(self, aligned: Tensor) -> tuple[Tensor, Tensor]:
        """The mean image of the aligned restarts; the per-pixel standard deviation as uncertainty."""
        return aligned.mean(0), aligned.std(0, unbiased=False)

    def evaluate(self, recon: Tensor, truth: Tensor, entropy: Optional[Tensor] = None) -> dict[str, Any]:
        metrics = reconstruction_metrics(recon, truth, self.metric_range)
        metrics["score"] = metrics["ssim"]
        return metrics

    def row_values(self, metrics: dict[str, Any], v: int) -> dict[str, Any]:
        """Victim ``v``'s SSIM, PSNR and MSE (NaN when not scored) and each of its images' SSIM (a list,
        empty when not scored)."""
        out = super().row_values({k: t for k, t in metrics.items() if k != "ssim_images"}, v)
        out["ssim_images"] = [float(x) for x in metrics["ssim_images"][v]] if "ssim_images" in metrics else []
        return out

    def scalar_names(self) -> tuple[str, ...]:
        return ("ssim", "psnr", "mse")

    def overview_charts(self) -> dict[str, str]:
        return {"SSIM of every victim": r"^victim_\d+/ssim$", "PSNR of every victim (dB)": r"^victim_\d+/psnr$",
                "MSE of every victim, log10": r"^victim_\d+/log10_mse$"}

    def check_truth(self, truth: Tensor) -> None:
        super().check_truth(truth)
        lo, hi = self.data_range
        tol = 1e-6 * max(1.0, hi - lo)
        if float(truth.min()) < lo - tol or float(truth.max()) > hi + tol:
            raise ValueError(f"the true images hold values in [{float(truth.min()):g}, {float(truth.max()):g}], outside "
                             f"the data range [{lo:g}, {hi:g}] the reconstruction was made for: give x in that range "
                             "(or invert with its data_range)")

    def with_metric_range(self, width: float) -> "ImageKind":
        return ImageKind(self.sample_shape, self.data_range, width)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "data_range": list(self.data_range)}
