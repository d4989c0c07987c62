"""Pictures: training curves and before/after comparisons (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vdsr.extras import need
from vdsr.io.fileio import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: figures are drawn to files, no display needed."""
    matplotlib = need("matplotlib", "train")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curve(csv_path: str | os.PathLike[str], out: str | os.PathLike[str],
                   title: str = "VDSR training") -> None:
    """Plot training loss (log scale) and validation Y-PSNR per scale from ``metrics.csv``."""
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [int(r["step"]) for r in rows if r.get("train_loss")]
    loss = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    ax1.plot(steps, loss, lw=0.8)
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training MSE (Y in [0,1])")
    ax1.grid(alpha=0.3)
    for key in (k for k in rows[0] if k.startswith("val_psnr_x")):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        if pts:
            ax2.plot(*zip(*pts, strict=True), marker="o", ms=3, label=key.replace("val_psnr_", ""))
    ax2.set_xlabel("step")
    ax2.set_ylabel("validation Y-PSNR (dB)")
    ax2.grid(alpha=0.3)
    if ax2.lines:
        ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)


def detail_box(images: Sequence[NDArray[np.floating]], side: int) -> tuple[int, int, int]:
    """``(top, left, side)`` of the ``side`` x ``side`` square where the images differ most.

    The first two images (e.g. bicubic and VDSR, float [0, 1], same size) are compared by mean
    absolute difference over each square (a summed-area table, so every position is scored);
    ``side`` is capped by the image size. With one image the centre square is used.
    """
    h, w = images[0].shape[:2]
    side = max(1, min(side, h, w))
    if len(images) < 2:
        return (h - side) // 2, (w - side) // 2, side
    diff = np.abs(np.asarray(images[0], dtype=np.float64) - np.asarray(images[1], dtype=np.float64))
    if diff.ndim == 3:
        diff = diff.mean(axis=2)
    table = np.pad(diff.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = table[side:, side:] - table[:-side, side:] - table[side:, :-side] + table[:-side, :-side]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left), side


def comparison(panels: list[tuple[str, NDArray[np.floating]]], out: str | os.PathLike[str],
               crop: int | None = 256, title: str | None = None) -> tuple[int, int, int, int]:
    """Write an image (in the format of ``out``'s extension: PNG, JPEG, ...) with crops of the
    images of ``panels`` (label, float [0, 1] image of one size)
    side by side, at full resolution: each output pixel is a ``zoom`` x ``zoom`` block of the
    image's pixels (no resampling), so what separates bicubic from VDSR stays visible however
    large the image.

    ``crop`` is the side of the square shown (``None``: the whole image), placed where the
    first two panels differ most (:func:`detail_box`). Returns ``(top, left, side, zoom)``.
    """
    from PIL import Image, ImageDraw, ImageFont

    images = [np.clip(np.asarray(a, dtype=np.float64), 0, 1) for _, a in panels]
    h, w = images[0].shape[:2]
    top, left, side = detail_box(images, crop) if crop else (0, 0, 0)
    box_h, box_w = (side, side) if crop else (h, w)
    zoom = max(1, 320 // max(box_h, box_w))  # small crops are enlarged to at least ~320 px
    gap, label_h = 12, 26
    title_h = label_h if title else 0
    canvas = Image.new("RGB", (len(images) * (box_w * zoom + gap) + gap, title_h + label_h + box_h * zoom + gap),
                       "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=15)
    if title:
        draw.text((gap, 5), title, fill="black", font=font)
    for i, (img, (label, _)) in enumerate(zip(images, panels, strict=True)):
        part = img[top : top + box_h, left : left + box_w]
        rgb = np.repeat(part[..., None], 3, axis=2) if part.ndim == 2 else part[..., :3]
        pixels = np.round(rgb * 255).astype(np.uint8).repeat(zoom, axis=0).repeat(zoom, axis=1)
        x = gap + i * (box_w * zoom + gap)
        draw.text((x, title_h + 5), label, fill="black", font=font)
        canvas.paste(Image.fromarray(np.ascontiguousarray(pixels)), (x, title_h + label_h))
    from vdsr.io.encode import output_format

    with atomic_path(Path(out)) as tmp:
        canvas.save(tmp, format=output_format(Path(out)))  # the format its extension names
    return top, left, side if crop else 0, zoom


def compare_files(source: str | os.PathLike[str], upscaled: str | os.PathLike[str], scale: float,
                  out: str | os.PathLike[str]) -> None:
    """``vdsr upscale --compare``: bicubic of ``source`` beside the written ``upscaled`` file,
    full-resolution crops where they differ most (the whole image when it is small), to ``out``."""
    from pathlib import Path

    from vdsr.api import bicubic_upscale
    from vdsr.io.images import load_image

    image, result = load_image(source).floats()[0], load_image(upscaled).floats()[0]
    big = min(result.shape[0], result.shape[1]) > 256
    comparison([(f"bicubic x{scale:g}", bicubic_upscale(image, scale)), (f"VDSR x{scale:g}", result)], out,
               title=f"{Path(source).name}: the {'region where they differ most' if big else 'whole image'}, "
                     "at full resolution")
