"""Property tests (hypothesis) across modules: resize, colour and the bicubic upscaler raise
nothing but the project's own error type, whatever they are fed. (Fuzzers of one module sit
with it: the loader's in test_images.py, the weights' in test_weights.py and
test_importers.py.)"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import FUZZ
from vdsr.api import bicubic_upscale
from vdsr.color import rgb2y, rgb2ycbcr, ycbcr2rgb
from vdsr.errors import VDSRError
from vdsr.resize import imresize, modcrop

shapes = st.one_of(
    st.tuples(st.integers(0, 12), st.integers(0, 12)),
    st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(0, 5)),
    st.tuples(st.integers(0, 3)),
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
)
scales = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-3, 6))


@FUZZ
@given(shape=shapes, scale=scales, dtype=st.sampled_from([np.uint8, np.float32, np.float64, np.uint16]))
def test_resize_and_colour_raise_only_our_error(shape: tuple[int, ...], scale: float, dtype: type) -> None:
    arr = (np.random.default_rng(0).random(shape) * 200).astype(dtype)
    for call in (
        lambda: imresize(arr, scale=scale),
        lambda: modcrop(arr, scale),  # type: ignore[arg-type]
        lambda: rgb2ycbcr(arr),
        lambda: ycbcr2rgb(arr),
        lambda: rgb2y(arr),
        lambda: bicubic_upscale(arr, scale),
    ):
        try:
            out = call()
        except VDSRError:
            continue
        assert np.isfinite(np.asarray(out, dtype=np.float64)).all()  # finite in, finite out
