"""Scoring a model on benchmark folders, beside the paper, and tables of the results.

Each image is made into a pair by the benchmark protocol (:mod:`vdsr.quality.protocol`, where
the protocol is written down, once), upscaled by bicubic and by the model, and scored with PSNR
and SSIM on Y between the ground truth and the output (clipped to [0, 255], unrounded), on the
0-255 scale, shaving ``s`` pixels from every border (:mod:`vdsr.quality.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import NDArray

from vdsr.constants import DEFAULT_SCALES
from vdsr.errors import InvalidArgument
from vdsr.io.images import list_images, load_image
from vdsr.quality.metrics import psnr, ssim
from vdsr.quality.protocol import check_protocol, make_pair

if TYPE_CHECKING:
    from vdsr.engine import Upscaler


# Table 3 of the paper: (PSNR, SSIM) for bicubic and VDSR.
PAPER: dict[tuple[str, int], dict[str, tuple[float, float]]] = {
    ("Set5", 2): {"bicubic": (33.66, 0.9299), "vdsr": (37.53, 0.9587)},
    ("Set5", 3): {"bicubic": (30.39, 0.8682), "vdsr": (33.66, 0.9213)},
    ("Set5", 4): {"bicubic": (28.42, 0.8104), "vdsr": (31.35, 0.8838)},
    ("Set14", 2): {"bicubic": (30.24, 0.8688), "vdsr": (33.03, 0.9124)},
    ("Set14", 3): {"bicubic": (27.55, 0.7742), "vdsr": (29.77, 0.8314)},
    ("Set14", 4): {"bicubic": (26.00, 0.7027), "vdsr": (28.01, 0.7674)},
    ("B100", 2): {"bicubic": (29.56, 0.8431), "vdsr": (31.90, 0.8960)},
    ("B100", 3): {"bicubic": (27.21, 0.7385), "vdsr": (28.82, 0.7976)},
    ("B100", 4): {"bicubic": (25.96, 0.6675), "vdsr": (27.29, 0.7251)},
    ("Urban100", 2): {"bicubic": (26.88, 0.8403), "vdsr": (30.76, 0.9140)},
    ("Urban100", 3): {"bicubic": (24.46, 0.7349), "vdsr": (27.14, 0.8279)},
    ("Urban100", 4): {"bicubic": (23.14, 0.6577), "vdsr": (25.18, 0.7524)},
}


@dataclass
class Result:
    """Mean Y-PSNR (dB) and SSIM over one dataset at one scale."""

    dataset: str
    scale: int
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float
    images: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def super_resolve_y(up: Upscaler, bicubic_y: NDArray[np.float64]) -> NDArray[np.float64]:
    """Run a 1-channel model on a 0-255 bicubic Y image; returns 0-255 Y clipped to [0, 255]."""
    x = torch.from_numpy(np.ascontiguousarray(bicubic_y / 255.0, dtype=np.float32))[None, None]
    out = up.network(x)[0, 0].cpu().numpy()
    return np.clip(out.astype(np.float64) * 255.0, 0.0, 255.0)


@dataclass(frozen=True)
class EvalConfig:
    """What :func:`evaluate_folder` measures: the scales, the protocol (:data:`PROTOCOLS`),
    whether SSIM too (training validation skips it for speed), and the input-pixel limit."""

    scales: tuple[int, ...] = DEFAULT_SCALES
    protocol: str = "rgb8"
    ssim: bool = True
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        check_protocol(self.protocol)


@dataclass
class _Sums:
    """Running sums of one scale's scores."""

    psnr: float = 0.0
    ssim: float = 0.0
    bicubic_psnr: float = 0.0
    bicubic_ssim: float = 0.0
    images: int = 0


def evaluate_folder(up: Upscaler | None, folder: str | Path, config: EvalConfig = EvalConfig(),
                    progress: Callable[[str], None] | None = None) -> list[Result]:
    """Score ``up`` (or bicubic alone when ``None``) on every image of ``folder``, per scale.

    Images are read one at a time. ``progress`` is called once per (image, scale) with a short
    description. Skipped SSIM (``config.ssim=False``) and a missing model read as NaN.
    """
    folder = Path(folder)
    files = list_images(folder)
    if up is not None and up.config.channels != 1:
        raise InvalidArgument("evaluation scores Y; this model has 3 channels")
    sums = {scale: _Sums() for scale in config.scales}
    nan = float("nan")
    for path in files:
        image = load_image(path, **({"max_pixels": config.max_pixels} if config.max_pixels else {}))
        hr = image.floats()[0]
        for scale, total in sums.items():
            gt_y, bic_y = make_pair(hr, scale, config.protocol)
            total.bicubic_psnr += psnr(gt_y, bic_y, border=scale)
            total.bicubic_ssim += ssim(gt_y, bic_y, border=scale) if config.ssim else nan
            if up is not None:
                sr_y = super_resolve_y(up, bic_y)
                total.psnr += psnr(gt_y, sr_y, border=scale)
                total.ssim += ssim(gt_y, sr_y, border=scale) if config.ssim else nan
            else:
                total.psnr, total.ssim = nan, nan
            total.images += 1
            if progress is not None:
                progress(f"{folder.name} x{scale} {path.name}")
    return [Result(folder.name, int(scale), t.psnr / t.images, t.ssim / t.images,
                   t.bicubic_psnr / t.images, t.bicubic_ssim / t.images, t.images)
            for scale, t in sums.items()]


def format_table(results: Sequence[Result]) -> str:
    """A plain-text table of results, with the paper's numbers beside known datasets."""
    head = (f"{'dataset':<10} {'scale':>5} {'bicubic':>15} {'model':>15} "
            f"{'paper bicubic':>15} {'paper VDSR':>15}")
    lines = [head, "-" * len(head)]
    for r in results:
        paper = PAPER.get((r.dataset, r.scale))
        pb = f"{paper['bicubic'][0]:.2f}/{paper['bicubic'][1]:.4f}" if paper else "-"
        pv = f"{paper['vdsr'][0]:.2f}/{paper['vdsr'][1]:.4f}" if paper else "-"
        model = "-" if np.isnan(r.psnr) else f"{r.psnr:.2f}/{r.ssim:.4f}"
        lines.append(
            f"{r.dataset:<10} {'x' + str(r.scale):>5} {r.bicubic_psnr:>7.2f}/{r.bicubic_ssim:.4f} "
            f"{model:>15} {pb:>15} {pv:>15}"
        )
    lines.append("(PSNR dB / SSIM on Y, border of `scale` pixels shaved)")
    return "\n".join(lines)
