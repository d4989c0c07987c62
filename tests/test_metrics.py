"""vdsr.quality.metrics: PSNR and SSIM: the border shave, and SSIM equal to a direct transcription of
ssim_index.m."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import correlate2d  # dev: the reference transcription only

from vdsr.quality.metrics import psnr, shave, ssim


def _ssim_index_m(img1: np.ndarray, img2: np.ndarray) -> float:
    """Wang et al.'s ssim_index.m, line by line: fspecial('gaussian', 11, 1.5), filter2 'valid'."""
    x = np.arange(11) - 5
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5**2))
    window = g / g.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def f(a: np.ndarray) -> np.ndarray:
        return correlate2d(a, window, mode="valid")

    mu1, mu2 = f(img1), f(img2)
    s1 = f(img1 * img1) - mu1**2
    s2 = f(img2 * img2) - mu2**2
    s12 = f(img1 * img2) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return float(m.mean())


def test_ssim_matches_wang_reference() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((40, 37)) * 255
    b = np.clip(a + rng.normal(0, 12, a.shape), 0, 255)
    assert ssim(a, b) == pytest.approx(_ssim_index_m(a, b), abs=1e-9)
    assert ssim(a, b, border=3) == pytest.approx(_ssim_index_m(a[3:-3, 3:-3], b[3:-3, 3:-3]), abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)


def test_psnr_known_value_and_shave() -> None:
    a = np.zeros((10, 10))
    b = np.full((10, 10), 255.0 / 10)  # MSE = 25.5^2 -> 20 dB
    assert psnr(a, b) == pytest.approx(20.0)
    b2 = b.copy()
    b2[0, :] = 255  # a border error that shaving removes
    assert psnr(a, b2, border=1) == pytest.approx(20.0)
    assert psnr(a, b2) < 20.0
    assert psnr(a, a) == float("inf")


def test_shave_and_shape_errors() -> None:
    assert shave(np.zeros((10, 12, 3)), 2).shape == (6, 8, 3)
    with pytest.raises(ValueError):
        shave(np.zeros((4, 4)), 2)
    with pytest.raises(ValueError):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))


def test_ssim_equals_scikit_image() -> None:
    """Our NumPy SSIM gives scikit-image's numbers (the settings the protocol names), on random
    images of odd sizes and contrasts and on real photos, within 1e-9."""
    from skimage import data
    from skimage.metrics import structural_similarity

    def theirs(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
        return float(structural_similarity(a, b, data_range=data_range, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False, K1=0.01, K2=0.03))

    rng = np.random.default_rng(1)
    worst = 0.0
    for shape, noise in [((11, 11), 30), ((12, 50), 5), ((64, 41), 60), ((97, 130), 1)]:
        a = rng.random(shape) * 255
        b = np.clip(a + rng.normal(0, noise, shape), 0, 255)
        worst = max(worst, abs(ssim(a, b) - theirs(a, b)))
    a = rng.random((30, 33))
    worst = max(worst, abs(ssim(a, a * 0.9, data_range=1.0) - theirs(a, a * 0.9, 1.0)))
    for photo in (data.camera(), data.coins(), data.astronaut()[..., 1]):
        ref = photo.astype(np.float64)
        test = np.round(np.clip(ref + rng.normal(0, 8, ref.shape), 0, 255))
        worst = max(worst, abs(ssim(ref, test, border=4) - theirs(ref[4:-4, 4:-4], test[4:-4, 4:-4])))
    assert worst <= 1e-9, worst
