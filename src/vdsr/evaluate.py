"""The benchmark protocol behind the published VDSR numbers, and tables of results.

For each HR image and scale ``s`` (protocol ``"rgb8"``, the default, as benchmark suites do):

1. ``hr = modcrop(hr, s)`` (8-bit RGB, or grey);
2. ``lr = uint8(imresize(hr, 1/s))``: MATLAB bicubic with antialiasing, rounded to 8 bits;
3. ``Y`` of ``lr`` (MATLAB ``rgb2ycbcr``, double), bicubic-upscaled by ``s``: the network input;
4. PSNR/SSIM between the ground truth's Y and the output's Y (clipped to [0, 255], unrounded),
   on the 0-255 scale, shaving ``s`` pixels from every border.

Protocol ``"ydouble"`` is the one of the authors' MATLAB test code and of ``set5_butterfly_x*.mat``:
the LR image is made from the HR Y channel in double precision, with no 8-bit rounding.
Greyscale images (Set14's bridge) use their grey value as Y.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from vdsr.color import rgb2y, rgb2ycbcr
from vdsr.constants import DEFAULT_TILE
from vdsr.engine import Upscaler
from vdsr.errors import InvalidArgument
from vdsr.images import list_images, load_image
from vdsr.inference import upscaler_for
from vdsr.metrics import psnr, ssim
from vdsr.model import VDSR
from vdsr.resize import downscale_8bit, imresize, modcrop

PROTOCOLS = ("rgb8", "ydouble")

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


def make_pair(
    hr: NDArray[np.float64], scale: int, protocol: str = "rgb8"
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Ground-truth Y and bicubic Y (both ``(H, W)``, 0-255 float) for an HR image in [0, 1].

    ``hr`` is ``(H, W, 3)`` RGB or ``(H, W)`` grey, 8-bit values divided by 255.
    """
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    hr = modcrop(hr, scale)
    gray = hr.ndim == 2
    gt_y = (hr if gray else rgb2y(hr)) * 255.0
    if protocol == "ydouble":
        lr_y = imresize(gt_y, 1.0 / scale)
    else:
        lr = downscale_8bit(hr, scale)
        lr_y = lr if gray else rgb2ycbcr(lr / 255.0)[..., 0] * 255.0
    bicubic_y = imresize(lr_y, scale)
    return gt_y, bicubic_y


def super_resolve_y(up: Upscaler, bicubic_y: NDArray[np.float64]) -> NDArray[np.float64]:
    """Run a 1-channel model on a 0-255 bicubic Y image; returns 0-255 Y clipped to [0, 255]."""
    x = torch.from_numpy(np.ascontiguousarray(bicubic_y / 255.0, dtype=np.float32))[None, None]
    out = up.network(x)[0, 0].cpu().numpy()
    return np.clip(out.astype(np.float64) * 255.0, 0.0, 255.0)


def evaluate_folder(
    model: VDSR | Upscaler | None,
    folder: str | Path,
    scales: Sequence[int],
    protocol: str = "rgb8",
    tile: int | None = DEFAULT_TILE,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    max_pixels: int | None = None,
    with_ssim: bool = True,
    backend: str = "auto",
    precision: str = "auto",
    ensemble: bool = False,
) -> list[Result]:
    """Score ``model`` (or bicubic alone when ``model`` is None) on every image of ``folder``.

    ``model`` may also be a ready :class:`Upscaler` (then ``tile``, ``device``, ``backend``,
    ``precision`` and ``ensemble`` are its own).

    ``progress`` is called once per (image, scale) with a short description. ``with_ssim=False``
    skips SSIM (reported as NaN), which is what training validation uses for speed.
    """
    folder = Path(folder)
    files = list_images(folder)
    up: Upscaler | None = None
    if isinstance(model, Upscaler):
        up = model
    elif model is not None:
        up = upscaler_for(model, tile, device, backend, precision, ensemble)
    if up is not None and up.config.channels != 1:
        raise InvalidArgument("evaluation scores Y; this model has 3 channels")
    images = [load_image(f, **({"max_pixels": max_pixels} if max_pixels else {})) for f in files]
    results = []
    for scale in scales:
        sums = np.zeros(4)
        for img in images:
            gt_y, bic_y = make_pair(img.pixels, scale, protocol)
            sums[2] += psnr(gt_y, bic_y, border=scale)
            sums[3] += ssim(gt_y, bic_y, border=scale) if with_ssim else np.nan
            if up is not None:
                sr_y = super_resolve_y(up, bic_y)
                sums[0] += psnr(gt_y, sr_y, border=scale)
                sums[1] += ssim(gt_y, sr_y, border=scale) if with_ssim else np.nan
            else:
                sums[0] += np.nan
                sums[1] += np.nan
            if progress is not None:
                progress(f"{folder.name} x{scale} {img.path.name}")
        mean = sums / len(images)
        results.append(
            Result(folder.name, int(scale), float(mean[0]), float(mean[1]), float(mean[2]),
                   float(mean[3]), len(images))
        )
    return results


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
