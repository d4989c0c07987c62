"""The MATLAB-exact protocol: modcrop, bicubic imresize and BT.601 YCbCr against MATLAB's own
outputs for Set5 butterfly (``../shared/reference/set5_butterfly_x{2,3,4}.mat``)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from tests.conftest import REFERENCE, needs_shared
from vdsr.color import rgb2y, rgb2ycbcr, ycbcr2rgb
from vdsr.evaluate import make_pair
from vdsr.resize import imresize, modcrop, output_size


@needs_shared
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_reproduces_matlab_outputs(scale: int) -> None:
    mat = scipy.io.loadmat(str(REFERENCE / f"set5_butterfly_x{scale}.mat"))
    hr = mat["im_gt"].astype(np.float64) / 255.0  # already modcropped by MATLAB
    assert modcrop(hr, scale).shape == hr.shape
    gt_y = rgb2y(hr) * 255.0
    assert np.abs(gt_y - mat["im_gt_y"]).max() < 1e-6
    lr_ycbcr = imresize(rgb2ycbcr(hr), 1.0 / scale)
    assert np.abs(lr_ycbcr - mat["im_l_ycbcr"]).max() * 255 < 1e-6
    lr_y = lr_ycbcr[..., 0] * 255.0
    assert np.abs(lr_y - mat["im_l_y"]).max() < 1e-6
    bicubic_y = imresize(lr_y, scale)
    assert bicubic_y.shape == mat["im_b_y"].shape
    assert np.abs(bicubic_y - mat["im_b_y"]).max() < 1e-6
    # The evaluation protocol's double-precision path is the same computation.
    ref_gt, ref_b = make_pair(hr, scale, protocol="ydouble")
    assert np.abs(ref_b - mat["im_b_y"]).max() < 1e-6
    assert np.abs(ref_gt - mat["im_gt_y"]).max() < 1e-6


@needs_shared
def test_constant_padding_would_fail() -> None:
    """Guard the reason for pad_mode='symmetric': constant padding is far off at borders."""
    from resize_right import interp_methods, resize

    mat = scipy.io.loadmat(str(REFERENCE / "set5_butterfly_x2.mat"))
    wrong = resize(mat["im_l_y"], scale_factors=2, interp_method=interp_methods.cubic)
    assert np.abs(wrong - mat["im_b_y"]).max() > 10


def test_modcrop_uses_integer_indices() -> None:
    """The notes' modcrop sliced with float indices from `/`; ours crops odd sizes exactly."""
    img = np.zeros((257, 130, 3))
    assert modcrop(img, 3).shape == (255, 129, 3)
    assert modcrop(img[..., 0], 4).shape == (256, 128)
    with pytest.raises(ValueError):
        modcrop(img, 2.5)  # type: ignore[arg-type]


def test_output_size_matches_matlab_ceil() -> None:
    assert output_size(255, 255, 1 / 3) == (85, 85)
    assert output_size(85, 85, 3) == (255, 255)
    assert output_size(7, 5, 0.5) == (4, 3)


def test_ycbcr_round_trip_and_ranges() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.random((17, 9, 3))
    ycc = rgb2ycbcr(rgb)
    assert np.allclose(ycbcr2rgb(ycc), rgb, atol=1e-12)
    # MATLAB's studio range: black -> 16, white -> 235.
    assert np.allclose(rgb2y(np.zeros(3)) * 255, 16.0)
    assert np.allclose(rgb2y(np.ones(3)) * 255, 235.0)
    assert np.allclose(rgb2ycbcr(np.ones(3))[1:] * 255, 128.0)
    with pytest.raises(ValueError):
        rgb2ycbcr(np.zeros((4, 4)))


def test_imresize_identity_and_downscale_antialias() -> None:
    img = np.arange(64, dtype=np.float64).reshape(8, 8)
    assert np.array_equal(imresize(img, 1.0), img)
    # Constant images stay constant (kernel weights sum to 1, antialiasing included).
    flat = np.full((12, 15), 7.0)
    assert np.allclose(imresize(flat, 1 / 3), 7.0)
    assert np.allclose(imresize(flat, 2.5), 7.0)
