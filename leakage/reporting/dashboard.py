"""What a run shows, in TensorBoard and in its files.

- the scalars of a logging step, and the overview layout of TensorBoard's CUSTOM SCALARS tab: one chart
  per metric, every victim a line;
- the labelled gallery and the loss-history figures (TensorBoard images, ``gallery.png``,
  ``history.png`` and ``report.html`` all use the same figures);
- the summary card (a TensorBoard text card) and the run's HPARAMS entry (settings and outcome).

Nothing here reads the secret itself: :class:`leakage.reporting.callbacks.LeakageReport` passes what it
computed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from leakage.data.kinds.image import ImageKind

#: tiles per row of the gallery at most (an update's images stay together)
GALLERY_COLUMNS = 10
#: the final scalars whose names say what they count (``final/<name>``), in the order of the card
FINAL_COUNTS = ("victims", "reconstructed", "not_reconstructed", "numerically_failed")
#: the attack settings of a run's HPARAMS entry, in this order
SETTINGS = ("threat_model", "attack", "dataset", "source", "victims", "batch_size", "model", "distance", "optimizer", "lr", "steps",
            "labels", "init", "restarts", "tv_weight", "defenses", "success_ssim")

_OK, _BAD = "#1a7f37", "#cf222e"  # green, red (readable in print)
_WRONG = "\u2717"  # a ballot x: the recovered label is wrong


# --------------------------------------------------------------------------- scalars
def log10(value: float) -> Optional[float]:
    """log10 of a loss for plotting (a zero loss is shown as 1e-38); None when not finite."""
    if not math.isfinite(value) or value < 0:
        return None
    return math.log10(max(value, 1e-38))


def step_scalars(losses: Tensor, metrics: Optional[dict], failed: Tensor, names: Sequence[str],
                 success_ssim: float) -> dict[str, float]:
    """The scalars of one logging step: per victim (its best restart so far) ``victim_NN/loss`` and
    ``log10_loss``, and with ``metrics`` each of the kind's scalar ``names`` and ``log10_mse``; over the
    victims ``attack/median_loss``, ``attack/log10_median_loss``, ``attack/<name>_mean`` and
    ``attack/reconstructed`` (score >= ``success_ssim``, not ``failed``). A value that cannot be
    plotted is None (the caller skips it)."""
    scalars: dict[str, float] = {}
    finite = []
    for v in range(losses.numel()):
        loss = float(losses[v])
        if math.isfinite(loss):
            finite.append(loss)
            scalars[f"victim_{v:02d}/loss"] = loss
            scalars[f"victim_{v:02d}/log10_loss"] = log10(loss)
    if finite:
        median = float(torch.tensor(finite, dtype=torch.float64).median())
        scalars["attack/median_loss"] = median
        scalars["attack/log10_median_loss"] = log10(median)
    if metrics is not None:
        for v in range(losses.numel()):
            for key in names:
                value = float(metrics[key][v])
                if math.isfinite(value):
                    scalars[f"victim_{v:02d}/{key}"] = value
            if "mse" in metrics:
                mse = log10(float(metrics["mse"][v]))
                if mse is not None:
                    scalars[f"victim_{v:02d}/log10_mse"] = mse
        for key in names:
            scalars[f"attack/{key}_mean"] = float(torch.nan_to_num(metrics[key]).mean())
        scalars["attack/reconstructed"] = float(((metrics["score"] >= success_ssim) & ~failed).sum())
    return scalars


def overview_layout(success_ssim: float, victims: int, kind=None) -> dict:
    """The CUSTOM SCALARS layout: every victim a line of one chart per metric of the ``kind`` (default
    images: SSIM, PSNR, MSE), losses in log10."""
    kind = kind if kind is not None else ImageKind()
    return {
        "overview": {
            f"victims reconstructed ({kind.score_label} >= {success_ssim:g}), of {victims}":
                ["Multiline", [r"^attack/reconstructed$"]],
            "matching loss of every victim, log10": ["Multiline", [r"^victim_\d+/log10_loss$"]],
            "median matching loss over the victims, log10": ["Multiline", [r"^attack/log10_median_loss$"]],
            **{title: ["Multiline", [tag]] for title, tag in kind.overview_charts().items()},
        },
    }


def outcomes(kind=None) -> tuple[str, ...]:
    """The outcome columns of a run's HPARAMS entry (scalars ``final/<name>``): the counts, the means
    of the ``kind``'s per-victim scalars (default images: SSIM, PSNR, MSE), label accuracy, gradient distance."""
    kind = kind if kind is not None else ImageKind()
    return ("reconstructed", "not_reconstructed", "numerically_failed", *(f"{k}_mean" for k in kind.scalar_names()),
            "label_acc", "grad_l2_mean")


def final_scalars(summary: dict[str, float]) -> dict[str, float]:
    """The ``final/*`` scalars: counts named for what they count, then the means."""
    out: dict[str, float] = {"victims": summary["victims"]}
    if "success" in summary:
        out["reconstructed"] = summary["success"]
        out["not_reconstructed"] = summary["victims"] - summary["success"]
    out["numerically_failed"] = summary["failed"]
    for key in ("ssim_mean", "psnr_mean", "mse_mean", "accuracy_mean", "accuracy_categorical_mean",
                "accuracy_continuous_mean", "label_acc", "grad_l2_mean", "entries_per_unknown"):
        if key in summary:
            out[key] = summary[key]
    if "images" in summary and summary["images"] > summary["victims"]:
        out["images"] = summary["images"]
        out["images_reconstructed"] = summary["image_success"]
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}


# --------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def gallery_slots(victims: int, batch: int, columns: int = GALLERY_COLUMNS) -> tuple[list[tuple[int, int]], int, int]:
    """Where each image ``(v, b)`` goes: ``(block row, column)`` in a grid of at most ``columns`` tiles
    per row, an update's images side by side (an update wider than a row starts a new block).

    Returns the slots (in ``v, b`` order), the number of block rows and of columns.
    """
    if batch <= columns:
        per_row = columns // batch
        cols = min(victims, per_row) * batch
        slots = [((v // per_row), (v % per_row) * batch + b) for v in range(victims) for b in range(batch)]
        return slots, math.ceil(victims / per_row), cols
    rows_each = math.ceil(batch / columns)
    slots = [(v * rows_each + b // columns, b % columns) for v in range(victims) for b in range(batch)]
    return slots, victims * rows_each, columns


def _font(size: int):
    """DejaVu Sans (shipped with matplotlib) at ``size`` pixels; PIL's own font if it cannot be found."""
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except (OSError, ValueError, ImportError):
        return ImageFont.load_default()


def _tile(img: Tensor, scale: int) -> np.ndarray:
    """A ``[C, H, W]`` image in [0, 1] as an upscaled ``[H*s, W*s, 3]`` uint8 tile (NaN shown grey)."""
    x = torch.nan_to_num(img.detach().float().cpu(), nan=0.5).clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    arr = (x[:3].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return arr.repeat(scale, axis=0).repeat(scale, axis=1)


def gallery_png(recon: Tensor, rec_labels: Tensor, *, truth: Optional[Tensor] = None,
                true_labels: Optional[Tensor] = None, indices: Optional[Sequence[Sequence[int]]] = None,
                ssim_images: Optional[Tensor] = None, perm: Optional[Tensor] = None,
                failed: Optional[Sequence[bool]] = None, success_ssim: float = 0.9, title: str = "") -> bytes:
    """Victims (top) and their reconstructions (below), labelled, as PNG bytes.

    ``recon`` ``[V, B, C, H, W]`` and ``rec_labels`` ``[V, B]`` are the reconstructions; ``truth``,
    ``true_labels``, ``indices`` (dataset indices), ``ssim_images`` ``[V, B]`` and ``perm`` (the
    reconstruction matched to each victim image) come from the evaluation, when victim images are
    known. Tiles are upscaled (nearest neighbour) to at least 112 pixels, at most 10 per row, the
    images of one update side by side. A reconstruction's caption is green when its SSIM reaches
    ``success_ssim`` and red when not; a victim whose every restart failed numerically is framed in
    red and captioned FAILED.
    """
    from PIL import Image, ImageDraw

    V, B, _, H, W = recon.shape
    scale = max(1, math.ceil(112 / max(H, W)))
    th, tw = H * scale, W * scale
    slots, blocks, cols = gallery_slots(V, B)
    font, head_font = _font(11), _font(13)
    cap, pad, gap = 16, 4, 10 if B > 1 else 0  # caption height, padding, extra space between updates
    rows = 2 if truth is not None else 1
    legend = ("top: victim (u: client update) #dataset index, true label y; below: recovered label "
              "(\u2717: wrong), SSIM; green: reconstructed, red: not" if truth is not None else "")
    header = [line for line in (title, legend) if line]
    top = pad + 18 * len(header)
    group = B if B <= GALLERY_COLUMNS else GALLERY_COLUMNS
    width = pad + cols * (tw + pad) + gap * (cols // group - 1 if cols >= group else 0)
    width = max([width] + [int(head_font.getlength(line)) + 2 * pad for line in header]) if header else width
    height = top + blocks * (rows * (cap + th) + 2 * pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(header):
        draw.text((pad, 3 + 18 * i), line, fill="black" if i == 0 and title else "#444", font=head_font)

    def place(blk: int, c: int, row: int) -> tuple[int, int]:
        x = pad + c * (tw + pad) + gap * (c // group)
        y = top + blk * (rows * (cap + th) + 2 * pad) + row * (cap + th) + cap
        return x, y

    for (v, b), (blk, c) in zip(((v, b) for v in range(V) for b in range(B)), slots):
        rb = int(perm[v][b]) if perm is not None else b
        if truth is not None:
            x, y = place(blk, c, 0)
            canvas.paste(Image.fromarray(_tile(truth[v, b], scale)), (x, y))
            head = f"u{v}" if B > 1 else f"v{v}"
            idx = f" #{indices[v][b]}" if indices is not None else ""
            label = f" y {int(true_labels[v, b])}" if true_labels is not None else ""
            draw.text((x, y - cap + 2), f"{head}{idx}{label}", fill="black", font=font)
        x, y = place(blk, c, rows - 1)
        canvas.paste(Image.fromarray(_tile(recon[v, rb], scale)), (x, y))
        caption, color = f"rec {int(rec_labels[v, rb])}", "black"
        if failed is not None and failed[v]:
            caption, color = "FAILED", _BAD
            draw.rectangle((x - 2, y - 2, x + tw + 1, y + th + 1), outline=_BAD, width=3)
        elif ssim_images is not None:
            s = float(ssim_images[v, b])
            wrong = true_labels is not None and int(rec_labels[v, rb]) != int(true_labels[v, b])
            caption = f"rec {int(rec_labels[v, rb])}{_WRONG if wrong else ''} SSIM {s:.2f}"
            color = _OK if s >= success_ssim else _BAD
        draw.text((x, y - cap + 2), caption, fill=color, font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def history_figure(history: np.ndarray, reconstructed: Optional[Sequence[bool]] = None, title: str = ""):
    """The matching loss of every victim's best restart over the attack, on a log scale.

    ``history`` is ``[steps, V]``. With ``reconstructed`` given, victims not reconstructed are drawn
    in red and named at the end of their line.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    fig.subplots_adjust(left=0.12, right=0.96, top=0.92, bottom=0.13)
    steps = np.arange(1, history.shape[0] + 1)
    V = history.shape[1]
    shown = np.where(np.isfinite(history) & (history > 0), history, np.nan)
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 3]  # no red: red marks failure
    for v in range(V):
        bad = reconstructed is not None and not reconstructed[v]
        kw = {"color": _BAD, "lw": 1.1} if bad else {"lw": 0.8, "alpha": 0.85, "color": palette[v % len(palette)]}
        if V <= 10:
            kw["label"] = f"victim {v}" + (" (not reconstructed)" if bad else "")
        ax.plot(steps, shown[:, v], **kw)
        if bad and V > 10:
            last = np.flatnonzero(np.isfinite(shown[:, v]))
            if last.size:
                ax.annotate(f"v{v}", (steps[last[-1]], shown[last[-1], v]), fontsize=6, color=_BAD,
                            xytext=(2, 0), textcoords="offset points", va="center")
    if np.isfinite(shown).any():
        ax.set_yscale("log")
    ax.set_xlabel("attack step")
    ax.set_ylabel("gradient-matching loss (best restart)")
    ax.grid(True, which="major", lw=0.3, alpha=0.5)
    if V <= 10:
        ax.legend(fontsize=6)
    elif reconstructed is not None:
        ax.plot([], [], color=_BAD, label="not reconstructed")
        ax.legend(fontsize=6)
    if title:
        ax.set_title(title, fontsize=8)
    return fig


def figure_png(fig, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    plt = _plt()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()


def png_array(png: bytes) -> np.ndarray:
    """PNG bytes as an ``[H, W, 3]`` uint8 array (what TensorBoard's ``add_image`` takes)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGB"))


# --------------------------------------------------------------------------- text and hparams
def _fmt(v: Any) -> str:
    """A value as the text card shows it: the report page's format (:func:`leakage.reporting.htmlreport.fmt`)."""
    from leakage.reporting.htmlreport import fmt

    return fmt(v)


def write_hparams(writer, hparams: dict[str, Any], metrics: Sequence[str]) -> None:
    """One HPARAMS entry in ``writer``'s run: ``hparams`` (numbers, strings, bools) and the scalar tags
    ``metrics`` as its outcome columns (their last values are what the tab shows).

    No domains are declared, so runs with other values are shown beside it (the tab takes the
    columns from one run's entry, so every run writes the same keys)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    clean = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in hparams.items()}
    exp, ssi, sei = hparams_summary(clean, {m: 0.0 for m in metrics})
    fw = writer._get_file_writer()
    if fw is None:  # a logger's stand-in experiment off rank 0
        return
    for summary in (exp, ssi, sei):
        fw.add_summary(summary)
