"""PSNR and SSIM on the Y channel, as the super-resolution literature computes them.

Both take images on the same value scale (``data_range``, 255 by default) and shave ``border``
pixels from every side first: the benchmark protocol drops a border of ``scale`` pixels because
bicubic and the network both see zero/mirror padding there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

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


# SSIM's window: a Gaussian of sigma 1.5 cut at 3.5 sigma, i.e. 11 taps (Wang et al.'s 11x11 window;
# scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5), truncate 3.5).
SSIM_SIGMA = 1.5
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)  # 5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _gaussian_taps() -> NDArray[np.float64]:
    x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return taps / taps.sum()


def _window_means(image: NDArray[np.float64], taps: NDArray[np.float64]) -> NDArray[np.float64]:
    """The Gaussian-weighted mean around every pixel whose whole window lies inside ``image``
    (shape ``(H - 10, W - 10)``): a separable filter, rows then columns, no padding needed."""
    n = len(taps)
    h, w = image.shape[0] - n + 1, image.shape[1] - n + 1
    rows = taps[0] * image[:h]
    for k in range(1, n):
        rows += taps[k] * image[k : k + h]
    out = taps[0] * rows[:, :w]
    for k in range(1, n):
        out += taps[k] * rows[:, k : k + w]
    return out


def ssim(
    reference: NDArray[Any], test: NDArray[Any], border: int = 0, data_range: float = 255.0
) -> float:
    """Mean SSIM of two ``(H, W)`` images, following Wang et al.'s ``ssim_index.m``.

    Gaussian 11x11 window with sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample)
    covariance, and the mean over the 'valid' region only (the pixels whose whole window lies
    in the image, so no padding rule enters the result). The same numbers as scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``,
    which crops the 5 pixels its reflect padding reaches (tests/test_metrics.py: within 1e-9).
    """
    if reference.shape != test.shape:
        raise InvalidArgument(f"ssim: shapes differ, {reference.shape} vs {test.shape}")
    if reference.ndim != 2:
        raise InvalidArgument(f"ssim expects single-channel (H, W) images, got {reference.shape}")
    ref = shave(np.asarray(reference, dtype=np.float64), border)
    tst = shave(np.asarray(test, dtype=np.float64), border)
    size = 2 * SSIM_RADIUS + 1
    if min(ref.shape) < size:
        raise InvalidArgument(f"ssim needs images of at least {size}x{size} after shaving, got {ref.shape}")
    taps = _gaussian_taps()
    mu_x, mu_y = _window_means(ref, taps), _window_means(tst, taps)
    var_x = _window_means(ref * ref, taps) - mu_x * mu_x
    var_y = _window_means(tst * tst, taps) - mu_y * mu_y
    cov = _window_means(ref * tst, taps) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(np.mean(index))
