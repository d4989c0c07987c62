"""vdsr.color: BT.601 YCbCr with MATLAB's constants: the round trip and the studio range."""

from __future__ import annotations

import numpy as np
import pytest

from vdsr.color import rgb2y, rgb2ycbcr, ycbcr2rgb


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
