"""Property tests (hypothesis): the loader, resize and colour functions raise nothing but the
project's own error type, whatever they are fed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import FUZZ, random_rgb
from vdsr.api import bicubic_upscale
from vdsr.color import rgb2y, rgb2ycbcr, ycbcr2rgb
from vdsr.errors import VDSRError
from vdsr.images import load_image
from vdsr.resize import imresize, modcrop


def _valid(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(random_rgb(16, 12)).save(buf, format=fmt)
    return buf.getvalue()


VALID = {"PNG": _valid("PNG"), "JPEG": _valid("JPEG")}


def _load_bytes(tmp: Path, data: bytes, suffix: str) -> None:
    path = tmp / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        img = load_image(path, max_pixels=4_000_000)
    except VDSRError:
        return
    assert img.pixels.ndim in (2, 3) and img.height > 0 and img.width > 0
    pixels = img.floats()[0]
    assert np.isfinite(pixels).all() and 0 <= pixels.min() and pixels.max() <= 1


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".png", ".jpg", ".gif", ".bin"]))
def test_loader_on_random_bytes(tmp_path: Path, data: bytes, suffix: str) -> None:
    _load_bytes(tmp_path, data, suffix)


@FUZZ
@given(fmt=st.sampled_from(sorted(VALID)),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=12),
       cut=st.one_of(st.none(), st.integers(0, 10_000)))
def test_loader_on_mutated_images(tmp_path: Path, fmt: str, edits: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(VALID[fmt])
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data)]
    _load_bytes(tmp_path, bytes(data), ".png" if fmt == "PNG" else ".jpg")


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
