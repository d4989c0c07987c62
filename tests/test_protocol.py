"""vdsr.quality.protocol: the benchmark protocol's steps (modcrop, MATLAB bicubic down and up, BT.601 Y)
and ``make_pair``'s ``ydouble`` path reproduce MATLAB's own outputs for Set5 butterfly
(``../shared/reference/set5_butterfly_x{2,3,4}.mat``)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from tests.conftest import REFERENCE, needs_shared
from vdsr.color import rgb2y, rgb2ycbcr
from vdsr.quality.protocol import make_pair
from vdsr.resize import imresize, modcrop


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
