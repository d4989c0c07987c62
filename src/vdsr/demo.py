"""``vdsr demo``: the main job on the built-in model, end to end, on a bundled photo.

Takes scikit-image's bundled ``chelsea`` photo (CC0) as ground truth, makes the low-resolution
input by MATLAB bicubic downscaling, upscales it with bicubic and with VDSR, and writes the
images, a zoomed side-by-side comparison PNG and the Y-PSNR of each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vdsr.api import bicubic_upscale, upscale, upscaler_for
from vdsr.color import rgb2y
from vdsr.io.encode import save_image
from vdsr.io.images import bundled_photo
from vdsr.io.outputs import check_folder, check_target, make_folders
from vdsr.plots import comparison
from vdsr.quality.metrics import psnr
from vdsr.resize import downscale_8bit, modcrop
from vdsr.weights import load_model


def sample_image() -> np.ndarray:
    """The bundled sample: ``(300, 451, 3)`` float64 RGB in [0, 1]."""
    return np.asarray(bundled_photo("chelsea"), dtype=np.float64) / 255.0


def run_demo(out_dir: Path, scale: int = 3, weights: str | None = None, overwrite: bool = False) -> str:
    """Write ``lr.png``, ``bicubic_xS.png``, ``vdsr_xS.png`` and ``compare.png`` to ``out_dir``.

    Files of those names already there are replaced only with ``overwrite``
    (:class:`~vdsr.errors.OutputExists`); the folder is checked (and created) before any work.
    Returns a short report with the Y-PSNR of bicubic and VDSR against the original.
    """
    names = ["lr.png", f"bicubic_x{scale}.png", f"vdsr_x{scale}.png", "compare.png"]
    check_folder(out_dir, create=True)
    for name in names:
        check_target(out_dir / name, overwrite=overwrite, folder_exists=False)
    model, _ = load_model(weights)
    make_folders([out_dir])
    hr = modcrop(sample_image(), scale)
    lr_image = downscale_8bit(hr, scale) / 255.0
    bicubic = np.clip(bicubic_upscale(lr_image, scale), 0, 1)
    sr = upscale(lr_image, scale, model=model)
    save_image(out_dir / "lr.png", lr_image)
    save_image(out_dir / f"bicubic_x{scale}.png", bicubic)
    save_image(out_dir / f"vdsr_x{scale}.png", sr)
    p_bic = psnr(rgb2y(hr) * 255, rgb2y(bicubic) * 255, border=scale)
    p_sr = psnr(rgb2y(hr) * 255, rgb2y(sr) * 255, border=scale)
    comparison(
        [(f"bicubic x{scale} ({p_bic:.2f} dB)", bicubic), (f"VDSR x{scale} ({p_sr:.2f} dB)", sr),
         ("original", hr)],
        out_dir / "compare.png", crop=160,
        title=f"chelsea x{scale}: Y-PSNR against the original; model: "
              f"{'the shipped VDSR model' if weights is None else Path(weights).name}",
    )
    run = upscaler_for(model).info.describe()  # the upscaler `upscale` used, from the cache
    return (f"chelsea x{scale}: bicubic {p_bic:.2f} dB, VDSR {p_sr:.2f} dB (Y-PSNR, shave {scale}; {run}); "
            f"wrote {out_dir}/compare.png and the images")
