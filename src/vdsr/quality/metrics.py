"""PSNR and SSIM on the Y channel, as the super-resolution literature computes them.

Both take images on the same value scale (``data_range``, 255 by default) and shave ``border``
pixels from every side first: the benchmark protocol drops a border of ``scale`` pixels because
bicubic and the network both see zero/mirror padding there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from skimage.metrics import structural_similarity

from vdsr.errors import InvalidArgument


def shave(image: NDArray[Any], border: int) -> NDArray[Any]:
    """Drop ``border`` pixels from each side of an ``(H, W, ...)`` array."""
    if border < 0:
        raise InvalidArgument(f"border must be >= 0, got {border}")
    if border == 0:
        return image
    if image.shape[0] <= 2 * border or image.shape[1] <= 2 * border:
        raise InvalidArgument(f"image of shape {image.shape} is too small to shave {border} pixels")
    return image[border:-border, border:-border, ...]


def psnr(
    reference: NDArray[Any], test: NDArray[Any], border: int = 0, data_range: float = 255.0
) -> float:
    """Peak signal-to-noise ratio in dB between two same-shaped arrays.

    Returns ``inf`` for identical images.
    """
    if reference.shape != test.shape:
        raise InvalidArgument(f"psnr: shapes differ, {reference.shape} vs {test.shape}")
    ref = shave(np.asarray(reference, dtype=np.float64), border)
    tst = shave(np.asarray(test, dtype=np.float64), border)
    mse = float(np.mean((ref - tst) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(data_range**2 / mse))


def ssim(
    reference: NDArray[Any], test: NDArray[Any], border: int = 0, data_range: float = 255.0
) -> float:
    """Mean SSIM of two ``(H, W)`` images, following Wang et al.'s ``ssim_index.m``.

    Gaussian 11x11 window with sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample)
    covariance, and the mean over the 'valid' region only. scikit-image documents that these
    settings reproduce Wang's implementation.
    """
    if reference.shape != test.shape:
        raise InvalidArgument(f"ssim: shapes differ, {reference.shape} vs {test.shape}")
    if reference.ndim != 2:
        raise InvalidArgument(f"ssim expects single-channel (H, W) images, got {reference.shape}")
    ref = shave(np.asarray(reference, dtype=np.float64), border)
    tst = shave(np.asarray(test, dtype=np.float64), border)
    if min(ref.shape) < 11:
        raise InvalidArgument(f"ssim needs images of at least 11x11 after shaving, got {ref.shape}")
    return float(
        structural_similarity(
            ref,
            tst,
            data_range=data_range,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            K1=0.01,
            K2=0.03,
        )
    )
