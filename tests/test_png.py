"""vdsr.io.png: the streaming PNG writer: what Pillow reads back, the metadata, and memory that stays
at a band."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import tiny_model
from vdsr.api import write_upscaled
from vdsr.engine import Upscaler
from vdsr.io.encode import png_options
from vdsr.io.images import load_image
from vdsr.io.png import PngWriter


@pytest.mark.parametrize(("channels", "bits"), [(1, 8), (2, 8), (3, 8), (4, 8), (1, 16), (3, 16)])
def test_pillow_reads_back_the_same_pixels(channels: int, bits: int) -> None:
    rng = np.random.default_rng(channels + bits)
    smooth = np.cumsum(rng.integers(0, 3, (37, 53, channels)), axis=1)  # something the filters like
    pixels = (smooth % (256 if bits == 8 else 65536)).astype(np.uint8 if bits == 8 else np.uint16)
    buf = io.BytesIO()
    writer = PngWriter(buf, 53, 37, channels, bits)
    for start in range(0, 37, 10):  # bands of any height, one at a time
        writer.write_rows(pixels[start:start + 10])
    writer.close()
    back = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    if bits == 16 and channels == 3:  # Pillow reads 16-bit colour PNG with 8 bits: compare those
        assert back.shape == pixels.shape and np.abs(back.astype(int) - (pixels >> 8)).max() <= 1
        return
    assert np.array_equal(back, pixels if channels > 1 else pixels[..., 0])


def test_metadata_is_written_and_rows_are_checked() -> None:
    exif = Image.Exif()
    exif[0x010F] = "vdsr test camera"
    icc = b"\x00" * 128 + b"fake profile"
    buf = io.BytesIO()
    writer = PngWriter(buf, 4, 3, 3, icc_profile=icc, dpi=(300, 72), exif=exif.tobytes())
    with pytest.raises(ValueError):
        writer.write_rows(np.zeros((3, 5, 3), np.uint8))  # wrong width
    writer.write_rows(np.zeros((3, 4, 3), np.uint8))
    with pytest.raises(ValueError):
        writer.write_rows(np.zeros((1, 4, 3), np.uint8))  # one row too many
    writer.close()
    img = Image.open(io.BytesIO(buf.getvalue()))
    assert img.info["icc_profile"] == icc
    assert img.info["dpi"] == pytest.approx((300, 72), abs=0.01)
    assert img.getexif()[0x010F] == "vdsr test camera"
    with pytest.raises(ValueError, match="rows written"):
        PngWriter(io.BytesIO(), 4, 3, 3).close()


@pytest.mark.slow  # tracemalloc slows every NumPy allocation: ~9 s on 2 loaded cores
def test_the_result_never_exists_whole(tmp_path: Path) -> None:
    """A 1600x1600 RGB result (7.7 MB) is written with the NumPy memory of a band of tiles (the
    engine's blocks, the encoder's rows), not an output-sized array (Pillow's RGB canvas alone
    would be 10 MB)."""
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(src)
    image = load_image(src)
    up = Upscaler(tiny_model(), device="cpu", precision="fp32", backend="torch", tile=96)
    tracemalloc.start()
    try:
        write_upscaled(up, image, tmp_path / "out.png", 4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert Image.open(tmp_path / "out.png").size == (1600, 1600)
    assert peak < 0.5 * 1600 * 1600 * 3, f"{peak / 1e6:.1f} MB of NumPy memory at the peak"
    assert png_options(image.metadata, (1600, 1600)) == {}
