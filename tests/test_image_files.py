"""Image files in and out: metadata (EXIF, ICC profile, DPI) carried to the output, colour-managed
input handled knowingly, and the 16-bit colour limitation said out loud (issue 18)."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from tests.conftest import random_rgb
from vdsr.images import decode_image, load_image, save_image

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def photo_with_metadata(path: Path) -> Path:
    """A JPEG as a camera writes it: EXIF (make, pixel size, orientation 6), ICC profile, 300 dpi."""
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x0112] = 6  # rotate 90° clockwise to display
    ifd = exif.get_ifd(0x8769)
    ifd[0xA002], ifd[0xA003] = 20, 12
    Image.fromarray(random_rgb(12, 20)).save(path, "JPEG", exif=exif.tobytes(), icc_profile=SRGB,
                                             dpi=(300, 300), quality=95)
    return path


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tif"])
def test_metadata_is_carried_to_the_output(tmp_path: Path, ext: str) -> None:
    img = load_image(photo_with_metadata(tmp_path / "cam.jpg"))
    assert (img.height, img.width) == (20, 12)  # orientation applied to the pixels
    out = tmp_path / f"out{ext}"
    big = np.repeat(np.repeat(img.pixels, 2, axis=0), 2, axis=1)
    save_image(out, big, None, img.bit_depth, metadata=img.metadata)
    with Image.open(out) as got:
        assert got.info.get("icc_profile") == SRGB
        exif = got.getexif()
        assert exif.get(0x010F) == "TestCam"
        assert 0x0112 not in exif or exif[0x0112] == 1  # not rotated a second time by viewers
        assert exif.get_ifd(0x8769).get(0xA002) == 24 and exif.get_ifd(0x8769).get(0xA003) == 40
        if ext != ".webp":  # WebP has no DPI field
            assert got.info["dpi"] == pytest.approx((300, 300), abs=0.01)


def test_cmyk_is_converted_and_not_tagged_with_its_old_profile(tmp_path: Path) -> None:
    src = tmp_path / "cmyk.jpg"
    Image.fromarray(random_rgb(16, 16)).convert("CMYK").save(src, "JPEG", quality=95)
    img = load_image(src)
    assert img.pixels.shape == (16, 16, 3) and img.metadata.icc_profile is None


def _png16_rgb(array: np.ndarray) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = array.shape
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in array)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("orientation", [1, 3, 6, 7, 8])
def test_16bit_colour_tiff_is_read_and_written_at_16_bits(tmp_path: Path, orientation: int) -> None:
    """Rough edge: 16-bit colour lost its depth silently; a TIFF now keeps it (through tifffile)."""
    import tifffile

    rng = np.random.default_rng(orientation)
    deep = rng.integers(0, 65535, (6, 9, 4), dtype=np.uint16)
    src = tmp_path / "deep.tif"
    tifffile.imwrite(src, deep, photometric="rgb", extrasamples=[2], iccprofile=SRGB,
                     resolution=(300, 300), resolutionunit="INCH",
                     extratags=[(274, "H", 1, orientation, True)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: no depth is lost
        img = load_image(src)
    assert img.bit_depth == 16
    with Image.open(src) as pil:  # Pillow's 8-bit reading, oriented by Pillow
        from PIL import ImageOps

        shallow = np.asarray(ImageOps.exif_transpose(pil).convert("RGB"), dtype=np.float64) / 255
    assert img.pixels.shape == shallow.shape and img.pixels.dtype == np.uint16
    assert np.abs(img.floats()[0] - shallow).max() <= 1 / 255  # same orientation, finer values
    assert img.metadata.icc_profile == SRGB and img.metadata.dpi == pytest.approx((300, 300))
    out = tmp_path / "out.tif"
    save_image(out, img.pixels, img.alpha, img.bit_depth, metadata=img.metadata)
    back = tifffile.imread(out)
    assert back.dtype == np.uint16 and back.shape[2] == 4
    assert np.array_equal(back[..., :3], img.pixels)
    with Image.open(out) as got:
        assert got.info.get("icc_profile") == SRGB and got.info["dpi"] == pytest.approx((300, 300))
    with pytest.warns(UserWarning, match="written with 8 bits per channel"):
        save_image(tmp_path / "out.png", img.pixels, img.alpha, img.bit_depth, metadata=img.metadata)


def test_16bit_colour_png_says_it_becomes_8bit() -> None:
    """Rough edge: a 16-bit RGB PNG was silently read and written with 8 bits (Pillow's limit)."""
    data = _png16_rgb(np.random.default_rng(0).integers(0, 65535, (6, 7, 3), dtype=np.uint16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = decode_image(data, "deep.png")
    assert img.bit_depth == 8
    assert ["deep.png: 16-bit colour is read, and written, with 8 bits per channel "
            "(16-bit colour TIFF keeps 16 bits)"] == [str(w.message) for w in caught]
    gray16 = io.BytesIO()
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(gray16, "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 16-bit grey is kept at 16 bits: no warning
        assert decode_image(gray16.getvalue(), "g.png").bit_depth == 16
