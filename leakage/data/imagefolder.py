"""A folder of the user's own images (``--data.source ImageFolder``): its layout rule and how an image is read.

Layout: a folder holds either class sub-folders (``folder/<class>/<image>``, labels 0, 1, ... by
sorted class name, torchvision's ``ImageFolder``) or images directly, each named
``<name>_<label>.<ext>``; a folder with both is refused. Names starting with ``.`` are ignored
(``.ipynb_checkpoints/``, ``.DS_Store``), and so is every file whose suffix is not an image's; a
class folder without images is refused (it would shift the labels after it). Every image name
must be a regular file or a link to one: anything else is refused before it is opened.

Depth: 8-bit images as PIL reads them; 16-bit PNGs (grey, RGB, RGBA) through
``torchvision.io.decode_image``; 16-bit, 32-bit integer and float TIFFs through PIL. Integers are
scaled by their type's range (``/255``, ``/65535``, ``/(2^31 - 1)``); float images must already lie
in [0, 1].
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from leakage.engine.files import regular_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_LABELLED_NAME = re.compile(r"_(\d+)$")
#: PIL modes of more than 8 bits per sample (their numpy dtype says the range)
_DEEP_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I", "F"}


def _png_depth(img: Image.Image) -> int:
    """Bits per sample of a PNG, from its decoder's raw mode (``RGB;16B`` for 16-bit RGB, which PIL
    itself reads as 8-bit RGB)."""
    raw = img.tile[0][3] if img.tile else ""
    raw = raw[0] if isinstance(raw, tuple) else str(raw)
    return 16 if raw.endswith(";16B") or img.mode.startswith("I;16") else 8


def _deep(path: Path, img: Image.Image) -> Tensor:
    """The samples of a deep (16-bit, 32-bit integer or float) image as ``[C, H, W]``, in their own dtype."""
    if img.format == "PNG":
        return decode_image(str(path), mode=ImageReadMode.UNCHANGED)  # uint16, every colour type
    arr = np.asarray(img)
    return torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=True))[None]


def _unit_range(path: Path, raw: Tensor) -> Tensor:
    """``raw`` as float32 in [0, 1]: integers divided by their type's maximum, floats as they are;
    values outside [0, 1] (negative integers, floats beyond it, NaN) are a one-line error."""
    x = F.to_dtype(raw, torch.float32, scale=True)
    low, high = float(x.min()), float(x.max())
    if not (low >= 0.0 and high <= 1.0):  # NaN fails both
        if raw.is_floating_point():
            raise ValueError(f"image {path} holds float values from {low:.4g} to {high:.4g}, outside [0, 1]: "
                             "scale float images to [0, 1] before saving them")
        raise ValueError(f"image {path} holds negative {str(raw.dtype).removeprefix('torch.')} values "
                         f"(down to {float(raw.min()):.6g}): images need values >= 0")
    return x


def _to_shape(x: Tensor, channels: int, size: Optional[tuple[int, int]]) -> Tensor:
    """``[C, H, W]`` with alpha dropped and grey/colour converted as PIL's ``convert`` does, resized
    bilinearly with antialiasing (as PIL's ``resize``)."""
    if x.shape[0] in (2, 4):
        x = x[:-1]
    if channels == 1 and x.shape[0] == 3:
        x = F.rgb_to_grayscale(x)
    elif channels == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if size is not None and tuple(x.shape[1:]) != tuple(size):
        x = F.resize(x, list(size), interpolation=F.InterpolationMode.BILINEAR, antialias=True).clamp(0, 1)
    return x.contiguous()


def read_image(path: Path, channels: int, size: Optional[tuple[int, int]]) -> Tensor:
    """One image file as a ``[C, H, W]`` float tensor in [0, 1], read at its real depth.

    A name that is not a regular file, a file PIL cannot read, a float image outside [0, 1], or one
    whose header declares more pixels than ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb: PIL
    warns up to twice the limit and refuses above) is a one-line error naming the file."""
    regular_file(path, "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.mode in _DEEP_MODES or (img.format == "PNG" and _png_depth(img) == 16):
                    raw = _deep(path, img)
                else:
                    img = img.convert("L" if channels == 1 else "RGB")
                    if size is not None and img.size != (size[1], size[0]):
                        img = img.resize((size[1], size[0]), Image.BILINEAR)
                    return transforms.functional.to_tensor(img)
    except UnidentifiedImageError:
        raise ValueError(f"cannot read image {path}: not an image file PIL can identify") from None
    except (OSError, SyntaxError, ValueError, RuntimeError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        # OSError: truncated or unreadable data; SyntaxError/ValueError: PIL's words for a broken file;
        # RuntimeError: torchvision's PNG decoder on a broken file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot read image {path}: {reason[:200]}") from None
    return _to_shape(_unit_range(path, raw), channels, size)


def _visible(folder: Path) -> list[Path]:
    """The entries of ``folder`` whose names do not start with ``.``, sorted."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def read_labelled_folder(folder: Path, channels: int, size: Optional[tuple[int, int]]) -> tuple[list[Tensor], list[int]]:
    """Images and labels from a folder, in sorted order, by the layout rule of this module."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"image folder {folder} is a file, not a folder")
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    entries = _visible(folder)
    subdirs = [p for p in entries if p.is_dir()]
    flat = [p for p in entries if not p.is_dir() and p.suffix.lower() in IMAGE_SUFFIXES]
    if subdirs and flat:
        raise ValueError(
            f"image folder {folder} mixes class sub-folders ({subdirs[0].name}/, ...) and image files "
            f"({flat[0].name}, ...): use one layout, folder/<class>/image.png or folder/image_<label>.png")
    images: list[Tensor] = []
    labels: list[int] = []
    for label, sub in enumerate(subdirs):
        files = [f for f in _visible(sub) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise ValueError(f"class folder {sub} holds no images: remove it or add images "
                             "(every sub-folder is a class, labelled by its sorted position)")
        for f in files:
            images.append(read_image(f, channels, size))
            labels.append(label)
    for f in flat:
        m = _LABELLED_NAME.search(f.stem)
        if m is None:
            raise ValueError(
                f"cannot tell the label of {f.name}: use class sub-folders (folder/<class>/image.png) "
                "or end each file name in _<label> (image_3.png)"
            )
        images.append(read_image(f, channels, size))
        labels.append(int(m.group(1)))
    if not images:
        raise ValueError(f"no images found in {folder}")
    return images, labels
