"""vdsr.io.images: image files in and out: formats, orientation, the pixel limits (checked from the
header), metadata (EXIF, ICC profile, DPI) carried to the output, damaged metadata, 16-bit
colour, what a format cannot hold said out loud, and the loader on random bytes."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, features

from tests.conftest import (
    FUZZ,
    SRGB,
    check_one_line_error,
    photo_with_metadata,
    random_rgb,
    run,
    write_png,
)
from vdsr.cli import main
from vdsr.errors import ImageError, VDSRError
from vdsr.io.encode import save_image
from vdsr.io.images import decode_image, load_image


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tif"])
def test_metadata_is_carried_to_the_output(tmp_path: Path, ext: str) -> None:
    img = load_image(photo_with_metadata(tmp_path / "cam.jpg"))
    assert (img.height, img.width) == (20, 12)  # orientation applied to the pixels
    out = tmp_path / f"out{ext}"
    big = np.repeat(np.repeat(img.raw, 2, axis=0), 2, axis=1)
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
    assert img.raw.shape == (16, 16, 3) and img.metadata.icc_profile is None


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
    assert img.raw.shape == shallow.shape and img.raw.dtype == np.uint16
    assert np.abs(img.floats()[0] - shallow).max() <= 1 / 255  # same orientation, finer values
    assert img.metadata.icc_profile == SRGB and img.metadata.dpi == pytest.approx((300, 300))
    out = tmp_path / "out.tif"
    save_image(out, img.raw, img.raw_alpha, img.bit_depth, metadata=img.metadata)
    back = tifffile.imread(out)
    assert back.dtype == np.uint16 and back.shape[2] == 4
    assert np.array_equal(back[..., :3], img.raw)
    with Image.open(out) as got:
        assert got.info.get("icc_profile") == SRGB and got.info["dpi"] == pytest.approx((300, 300))
    with pytest.warns(UserWarning, match="written with 8 bits per channel"):
        save_image(tmp_path / "out.png", img.raw, img.raw_alpha, img.bit_depth, metadata=img.metadata)


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


def test_format_quality_suffix_and_metadata(tmp_path: Path, tiny_weights: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """What users of other upscalers ask for: --format/--quality/--suffix, EXIF/ICC/DPI kept."""
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    photo_with_metadata(folder / "cam.jpg")
    w = ["--weights", str(tiny_weights)]
    sizes = {}
    for quality in ("30", "95"):
        out = tmp_path / f"q{quality}"
        code, _, err = run(["upscale", str(folder), "-s", "2", "-o", str(out), "--format", "jpg",
                            "--quality", quality, "--suffix=-big", *w], capsys)
        assert code == 0, err
        assert [p.name for p in out.glob("*.jpg")] == ["cam-big.jpg"]
        sizes[quality] = (out / "cam-big.jpg").stat().st_size
        with Image.open(out / "cam-big.jpg") as got:
            assert got.format == "JPEG" and got.size == (24, 40)
            assert got.info.get("icc_profile") == SRGB and got.getexif().get(0x010F) == "TestCam"
            assert got.info["dpi"] == (300, 300)
    assert sizes["30"] < sizes["95"]
    code, _, err = run(["upscale", str(folder / "cam.jpg"), "-s", "2", "-o", str(tmp_path / "x.png"),
                        "--format", "webp", *w], capsys)
    assert code == 1 and "does not match" in err
    for bad in (["--quality", "0"], ["--quality", "101"], ["--format", "gif"]):
        with pytest.raises(SystemExit) as exc:
            main(["upscale", "a.png", "-s", "2", "-o", "o/", *bad])
        assert exc.value.code == 2
    capsys.readouterr()


def test_upscale_keeps_16bit_colour_tiff(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rough edge: 16-bit RGB was silently written with 8 bits; a .tif output keeps 16."""
    import tifffile

    src = tmp_path / "deep.tif"
    tifffile.imwrite(src, (random_rgb(12, 14).astype(np.uint16) * 257 + 100), photometric="rgb")
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "out.tif"),
                        "--weights", str(tiny_weights)], capsys)
    assert code == 0 and err == ""
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.dtype == np.uint16 and out.shape == (24, 28, 3)
    assert len(np.unique(out % 257)) > 1  # values between the 8-bit steps: real 16-bit data
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "out.png"),
                        "--weights", str(tiny_weights)], capsys)
    assert code == 0 and "16-bit colour is written with 8 bits per channel" in err


def test_5_save_writes_the_file_not_the_directory(tmp_path: Path) -> None:
    """`imsave` wrote to the result directory path instead of the file."""
    out = tmp_path / "result" / "result.png"
    out.parent.mkdir()
    save_image(out, np.full((4, 5, 3), 0.5))
    assert out.is_file() and load_image(out).raw.shape == (4, 5, 3)


def _formats(tmp: Path) -> dict[str, tuple[Path, tuple[int, int]]]:
    rgb = random_rgb(12, 10)
    out: dict[str, tuple[Path, tuple[int, int]]] = {}

    def save(name: str, img: Image.Image, **kw: object) -> None:
        img.save(tmp / name, **kw)
        out[name] = (tmp / name, (img.size[0], img.size[1]))

    save("gray16.png", Image.fromarray(np.ascontiguousarray(rgb[..., 0].astype(np.uint16) * 257)))
    save("float32.tif", Image.fromarray(np.ascontiguousarray(rgb[..., 0].astype(np.float32) / 255)))
    save("palette.png", Image.fromarray(rgb).convert("P"))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"))
    save("la.png", Image.fromarray(rgb).convert("LA"))
    save("rgba.png", Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])))
    save("one_bit.png", Image.fromarray(rgb).convert("1"))
    save("bmp.bmp", Image.fromarray(rgb))
    save("webp.webp", Image.fromarray(rgb), lossless=True)
    save("name with spaces ünïcödé.png", Image.fromarray(rgb))
    save("tiny_1x1.png", Image.fromarray(rgb[:1, :1]))
    save("tiny_2x3.png", Image.fromarray(rgb[:2, :3]))
    return out


def test_formats_are_handled(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    formats = _formats(src)
    outdir = tmp_path / "out"
    code = main(["upscale", str(src), "-s", "2", "-o", str(outdir), "--weights", str(tiny_weights)])
    _, err = capsys.readouterr()
    assert code == 0, err
    for name, (path, (w, h)) in formats.items():
        result = Image.open(outdir / f"{path.stem}_x2.png")
        assert result.size == (2 * w, 2 * h), name
    assert Image.open(outdir / "rgba_x2.png").mode == "RGBA"
    assert Image.open(outdir / "la_x2.png").mode == "LA"
    assert Image.open(outdir / "gray16_x2.png").mode in ("I;16", "I")
    assert load_image(formats["gray16.png"][0]).bit_depth == 16


def test_exif_orientation_and_animated_gif(tmp_path: Path, tiny_weights: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    img = Image.fromarray(random_rgb(10, 30))  # 30 wide, 10 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    loaded = load_image(tmp_path / "rotated.jpg")
    assert (loaded.height, loaded.width) == (30, 10)
    frames = [Image.fromarray(random_rgb(8, 9, seed=s)) for s in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    code = main(["upscale", str(tmp_path / "anim.gif"), "-s", "2", "-o", str(tmp_path / "o.png"),
                 "--weights", str(tiny_weights)])
    _, err = capsys.readouterr()
    assert code == 0 and "animated image, using the first frame only" in err
    assert Image.open(tmp_path / "o.png").size == (18, 16)


def test_decompression_bomb_and_max_pixels(tmp_path: Path, tiny_weights: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # A 20000x20000 greyscale PNG compresses to a few hundred KB but would decode to 400 MP.
    bomb = tmp_path / "bomb.png"
    Image.new("L", (20000, 20000)).save(bomb, optimize=False)
    assert bomb.stat().st_size < 2_000_000
    code = main(["upscale", str(bomb), "-s", "2", "-o", str(tmp_path / "out.png"), "--weights", str(tiny_weights)])
    check_one_line_error(capsys, code, "bomb.png", "over the limit", "--max-pixels")
    small = write_png(tmp_path / "small.png", random_rgb(20, 20))
    code = main(["upscale", str(small), "-s", "2", "-o", str(tmp_path / "out.png"), "--weights", str(tiny_weights),
                 "--max-pixels", "100"])
    check_one_line_error(capsys, code, "small.png", "400 pixels is over the limit of 100")
    code = main(["upscale", str(small), "-s", "2", "-o", str(tmp_path / "out.png"), "--weights", str(tiny_weights),
                 "--max-pixels", "400"])
    assert code == 0


# ------------------------------------------------------------------------------------------------
# Issue 23 items 13-15: damaged metadata keeps the pixels; limits come from the header; what a
# format cannot hold is said out loud.
# ------------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _tiff_ifd(tag: int, kind: int, count: int, value: bytes) -> bytes:
    """EXIF (a little-endian TIFF) holding one tag of IFD0, typed as given."""
    inline = len(value) <= 4
    entry = struct.pack("<HHI", tag, kind, count) + (value.ljust(4, b"\0") if inline else struct.pack("<I", 26))
    return b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + struct.pack("<I", 0) + (
        b"" if inline else value)


def _jpeg_with_exif(path: Path, exif: bytes, rgb: np.ndarray) -> Path:
    Image.fromarray(rgb).save(path, "JPEG", exif=b"Exif\0\0" + exif, quality=95)
    return path


BAD_EXIF = {
    "garbage": (b"not a TIFF header at all" * 4, "unreadable EXIF data dropped (not a TIFF file (header "
                                                 "b'not a TI' not valid))"),
    "truncated_ifd": (b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 40) + b"\x12\x01",
                      "damaged EXIF data, unreadable parts dropped (Corrupt EXIF data."),
    "orientation_text": (_tiff_ifd(0x0112, 2, 4, b"abc\0"), "EXIF orientation 'abc' is not 1-8; ignored"),
    "orientation_two_shorts": (_tiff_ifd(0x0112, 3, 2, struct.pack("<HH", 6, 6)),
                               "damaged EXIF data, unreadable parts dropped (Metadata Warning, tag 274 "
                               "had too many entries: 2, expected 1)"),
    "orientation_9": (_tiff_ifd(0x0112, 3, 1, struct.pack("<H", 9)), "EXIF orientation 9 is not 1-8; ignored"),
}


@pytest.mark.parametrize("case", sorted(BAD_EXIF))
def test_damaged_exif_keeps_the_pixels_with_a_warning(case: str, tmp_path: Path) -> None:
    """Issue 23 item 13: a JPEG whose EXIF is damaged, or whose orientation has the wrong type, was
    refused ("truncated or corrupt image (not a TIFF file ...)") though Pillow decodes its pixels
    (seen failing for every case but orientation 9, which was silently ignored)."""
    exif, message = BAD_EXIF[case]
    rgb = random_rgb(12, 20)
    path = _jpeg_with_exif(tmp_path / "photo.jpg", exif, rgb)
    with pytest.warns(UserWarning) as caught:
        img = load_image(path)
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and said[0].startswith(f"{path}: {message}"), said
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from PIL import ImageOps

        with Image.open(path) as pil:
            shown = ImageOps.exif_transpose(pil)  # Pillow too reads (6, 6) as 6
    assert np.array_equal(img.raw, np.asarray(shown.convert("RGB")))
    out = tmp_path / "out.png"
    save_image(out, img.raw, metadata=img.metadata)  # what is kept can be written
    with Image.open(out) as got:
        assert got.size == shown.size and 0x0112 not in got.getexif()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` and whose pixel data is one junk chunk."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _chunk(b"IEND", b""))


def test_output_limit_is_checked_from_the_header(tmp_path: Path, tiny_weights: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23 item 14: --max-output-pixels was checked after the whole image was decoded (a
    20000² PNG with --max-pixels 500000000 -s 2: 24 s and 14 GB first). Seen failing: this
    header-only file was decoded, and refused as truncated instead."""
    from PIL import ImageFile

    from vdsr.cli import main
    from vdsr.errors import TooLarge
    from vdsr.io.images import probe, probe_image

    def no_decoding(*_a: object, **_k: object) -> None:
        raise AssertionError("pixels were decoded before the limits were checked")

    big = tmp_path / "big.png"
    big.write_bytes(_png_header_only(20000, 20000))
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(TooLarge) as info:
        load_image(big, max_pixels=500_000_000, scale=2, max_output_pixels=256_000_000)
    assert (info.value.what, info.value.width, info.value.height) == ("output", 40000, 40000)
    with pytest.raises(TooLarge):
        decode_image(big.read_bytes(), "big.png", max_pixels=500_000_000, scale=2, max_output_pixels=10**9)
    assert probe(big, max_pixels=500_000_000) == probe_image(big.read_bytes(), max_pixels=500_000_000) \
        == (20000, 20000)
    code = main(["upscale", str(big), "-s", "2", "-o", str(tmp_path / "o.png"), "--weights", str(tiny_weights),
                 "--max-pixels", "500000000"])
    assert code == 1 and capsys.readouterr().err == (
        f"vdsr: error: {big}: output of 40000x40000 = 1,600,000,000 pixels is over the limit of "
        "256,000,000 (raise it with --max-output-pixels)\n")


def test_probe_gives_the_oriented_size_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    from vdsr.errors import ImageError, TooLarge
    from vdsr.io.images import probe, probe_image

    path = photo_with_metadata(tmp_path / "cam.jpg")  # 20 wide, 12 high, orientation 6
    expected = load_image(path)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda *_a: (_ for _ in ()).throw(AssertionError("decoded")))
    assert probe(path) == probe_image(path.read_bytes()) == (expected.height, expected.width) == (20, 12)
    with pytest.raises(TooLarge):
        probe(path, max_pixels=239)
    with pytest.raises(ImageError, match="no such file"):
        probe(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        probe(tmp_path / "empty.png")


def _png_with_text(kind: bytes, text: bytes) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(random_rgb(8, 8)).save(buf, "PNG")
    png = buf.getvalue()
    body = b"Comment\0" + (b"\0" + zlib.compress(text, 1) if kind == b"zTXt" else text)
    return png[:33] + _chunk(kind, body) + png[33:]  # after IHDR (8 + 25 bytes)


def test_large_png_text_chunks_are_read_or_named(tmp_path: Path) -> None:
    """Issue 23 item 14: a valid PNG with a 20 MB zTXt chunk was "a truncated or corrupt image"
    (Pillow's 1 MB text limit; seen failing). It now decodes; text over 64 MB is named as such."""
    rng = np.random.default_rng(0)
    text = rng.integers(32, 127, 20 * 2**20, dtype=np.uint8).tobytes()
    for kind in (b"zTXt", b"tEXt"):
        img = decode_image(_png_with_text(kind, text), "text.png")
        assert img.raw.shape == (8, 8, 3)
    with pytest.raises(ImageError, match=r"text.png: its PNG text metadata \(tEXt/zTXt/iTXt chunks\) is over 64 MB"):
        decode_image(_png_with_text(b"zTXt", b"\0" * (100 * 2**20)), "text.png")
    from PIL import PngImagePlugin

    assert PngImagePlugin.MAX_TEXT_CHUNK == 2**20 and Image.MAX_IMAGE_PIXELS == 89_478_485  # restored


@pytest.mark.parametrize("ext", [".jpg", ".bmp"])
def test_dropping_alpha_is_said(ext: str, tmp_path: Path) -> None:
    """Issue 23 item 15: alpha was silently dropped when writing JPEG or BMP (seen failing)."""
    rgb = random_rgb(6, 6) / 255.0
    alpha = np.full((6, 6), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # opaque: nothing is lost, nothing to say
        save_image(tmp_path / f"opaque{ext}", rgb, alpha)
        save_image(tmp_path / "kept.png", rgb, alpha * 0.5)
    alpha[0, 0] = 0.5
    out = tmp_path / f"out{ext}"
    with pytest.warns(UserWarning, match=re.escape(f"{out}: {'JPEG' if ext == '.jpg' else 'BMP'} cannot hold "
                                                   "transparency; the alpha channel is dropped")):
        save_image(out, rgb, alpha)
    with Image.open(out) as got:
        assert got.mode == "RGB"


# -- property tests (hypothesis): the loader on random and mutated bytes ---------------------------

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
    assert img.raw.ndim in (2, 3) and img.height > 0 and img.width > 0
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


def test_bundled_photos_are_scikit_images_own_pixels() -> None:
    """The photos vdsr ships (vdsr/data/photos, some PNGs re-encoded smaller) decode to exactly
    scikit-image's arrays; every photo the recipe check, the calibration and the demo name is
    there, and another name is a KeyError (no silent fallback to scikit-image)."""
    from skimage import data

    from vdsr import export, recipes
    from vdsr.io.images import _BUNDLED_FILES, bundled_photo

    used = {name for name, _ in recipes.CHECK_IMAGES} | set(export.CALIBRATION_IMAGES) | {"chelsea"}
    assert used <= set(_BUNDLED_FILES), used - set(_BUNDLED_FILES)
    for name in _BUNDLED_FILES:
        got, want = bundled_photo(name), getattr(data, name)()
        assert got.dtype == np.uint8 and got.shape == want.shape and np.array_equal(got, want), name
    with pytest.raises(KeyError, match="brick"):
        bundled_photo("brick")


@pytest.mark.subprocess
def test_the_check_and_the_calibration_crops_need_no_scipy() -> None:
    """skimage.data's loaders import scipy and imageio (40 MB of the first run's peak); the
    recipe check's and the int8 calibration's crops are made without them."""
    code = ("import sys; from vdsr import export, recipes; recipes._check_pairs(1, (2, 3, 4)); "
            "list(export.calibration_inputs(1)); "
            "print(sorted(m for m in ('scipy', 'imageio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("compression", [None, "tiff_lzw"])
def test_a_tiff_upscales_to_tiff_and_png_with_its_description_not_its_layout(
        tmp_path: Path, compression: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    """`vdsr upscale scan.tif -o scan_x2.tif` (the --help example) failed with Pillow's "codec
    configuration error": the source's strip offsets, sizes and compression were carried as EXIF
    into the writer. Now the camera's tags go on and the file's layout tags do not (also not into
    a PNG's EXIF, where they named another file's sizes)."""
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS"
    Image.fromarray(rgb).save(tmp_path / "scan.tif", exif=exif, compression=compression)
    for out in ("scan_x2.tif", "scan_x2.png"):
        assert main(["upscale", str(tmp_path / "scan.tif"), "-s", "2", "-o", str(tmp_path / out),
                     "--precision", "fp32"]) == 0, capsys.readouterr().err
        with Image.open(tmp_path / out) as img:
            assert img.size == (96, 80)
            tags = dict(img.getexif())
        assert tags[0x010F] == "Canon" and tags[0x0110] == "EOS"
        if out.endswith(".png"):
            assert not {256, 257, 259, 273, 279} & set(tags), tags  # no strip offsets, sizes, codec
    # the pixels: the TIFF holds exactly what the PNG of the same upscale holds (both lossless)
    tif, png = (np.asarray(Image.open(tmp_path / n).convert("RGB")) for n in ("scan_x2.tif", "scan_x2.png"))
    assert np.array_equal(tif, png) and tif.std() > 10


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_avif_in_folders_and_out_with_alpha_and_quality(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 33, item 5 (AVIF): a folder run reads .avif inputs (it skipped them), `-o x.avif`
    and `--format avif` write AVIF, alpha is kept, and --quality is the encoder's: the result
    is close to the same upscale written as PNG, and a lower quality is a smaller file."""
    src = tmp_path / "in"
    src.mkdir()
    rgba = np.dstack([random_rgb(40, 48, seed=3), np.full((40, 48), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(src / "a.avif", quality=95)
    Image.fromarray(random_rgb(32, 32, seed=4)).save(src / "b.avif", quality=95)
    assert main(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "out"), "--format", "avif",
                 "--precision", "fp32"]) == 0
    assert "done 2, skipped 0, failed 0" in capsys.readouterr().out
    with Image.open(tmp_path / "out" / "a_x2.avif") as img:
        assert img.format == "AVIF" and img.size == (96, 80) and img.mode == "RGBA"
        avif = np.asarray(img.convert("RGBA"), dtype=np.float64)
    assert main(["upscale", str(src / "a.avif"), "-s", "2", "-o", str(tmp_path / "a.png"), "--precision", "fp32"]) == 0
    png = np.asarray(Image.open(tmp_path / "a.png").convert("RGBA"), dtype=np.float64)
    mse = np.mean((avif[..., :3] - png[..., :3]) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 30 and np.abs(avif[..., 3] - png[..., 3]).max() <= 8
    sizes = []
    for q in (95, 30):
        out = tmp_path / f"q{q}.avif"
        assert main(["upscale", str(src / "b.avif"), "-s", "2", "-o", str(out), "--quality", str(q),
                     "--precision", "fp32"]) == 0
        sizes.append(out.stat().st_size)
    assert sizes[1] < sizes[0]
    capsys.readouterr()
