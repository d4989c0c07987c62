"""Pictures: training curves and before/after comparisons (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from vdsr.fileio import atomic_path


def _figure():  # type: ignore[no-untyped-def]
    import matplotlib

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
    plt = _figure()
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
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def comparison(panels: list[tuple[str, NDArray[np.floating]]], out: str | os.PathLike[str],
               crop: int | None = None, title: str | None = None) -> None:
    """Write a PNG with the images of ``panels`` (label, float [0, 1] image of one size) in a row.

    ``crop`` shows only a centre square of that many pixels, enlarged with nearest-neighbour
    sampling, so the pixel-level detail that separates bicubic from VDSR is visible.
    """
    plt = _figure()
    images = [np.clip(np.asarray(a, dtype=np.float64), 0, 1) for _, a in panels]
    if crop:
        h, w = images[0].shape[:2]
        c = min(crop, h, w)
        top, left = (h - c) // 2, (w - c) // 2
        images = [a[top : top + c, left : left + c] for a in images]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, img, (label, _) in zip(axes[0], images, panels, strict=True):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(label)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(Path(out)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
