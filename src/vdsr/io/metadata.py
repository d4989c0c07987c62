"""What a file says about its pixels, carried from input to output: EXIF (its orientation applied
to the pixels and removed), the ICC profile, the DPI. A damaged EXIF block loses the metadata,
never the pixels, and says so in one warning naming the file."""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vdsr.quiet import catch_warnings

__all__ = ["ImageMetadata"]

_EXIF_IFD, _EXIF_WIDTH, _EXIF_HEIGHT = 0x8769, 0xA002, 0xA003


# Pillow's decoding errors: a file that is not what it says.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, KeyError, struct.error)


@dataclass
class ImageMetadata:
    """What a file says about its pixels, carried from input to output.

    Attributes:
        exif: raw EXIF bytes, orientation already applied to the pixels (the tag is removed).
        icc_profile: the ICC profile bytes the pixel values are encoded in (``None``: sRGB).
        dpi: ``(x, y)`` dots per inch, when the file states it.
    """

    exif: bytes | None = None
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None


def _header_orientation(img: Image.Image, path: Path) -> int:
    """The EXIF orientation an opened, not yet decoded, image states in its header (1 when it
    states none, or nothing readable: :func:`_decode` warns about that, once)."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # a PNG's EXIF may follow the pixels: Pillow would decode them to find it
    with catch_warnings():
        warnings.simplefilter("ignore")
        return _orientation(_read_exif(img, path), path)


def _read_exif(img: Image.Image, path: Path) -> Image.Exif:
    """The image's EXIF; a damaged block loses the metadata (all of it, or the unreadable
    parts), never the pixels, and says so in one warning naming the file.

    The raw block is parsed first on its own: Pillow parses it while opening a JPEG, hides a
    failure and then reports no EXIF at all.
    """
    failure: Exception | None = None
    with catch_warnings(record=True) as pillow_says:
        warnings.simplefilter("always")
        try:
            raw = img.info.get("exif")
            if isinstance(raw, bytes):
                Image.Exif().load(raw)
            exif = img.getexif()
            exif.get(_ORIENTATION)
        except (*_DECODE_ERRORS, UnicodeDecodeError) as exc:
            failure = exc
    if failure is not None:
        warnings.warn(f"{path}: unreadable EXIF data dropped ({_first_line(failure)})", stacklevel=4)
        return Image.Exif()
    said = [_first_line(w.message) for w in pillow_says if issubclass(w.category, UserWarning)]
    if said:  # Pillow read what it could: "Corrupt EXIF data. Expecting to read 12 bytes ..."
        warnings.warn(f"{path}: damaged EXIF data, unreadable parts dropped ({said[0]})", stacklevel=4)
    return exif


# A TIFF's EXIF (Pillow's getexif) is its first IFD: the tags that describe the picture, and
# those that lay out this file's strips, sizes and compression. Only the former go on to the
# output: the latter made Pillow's TIFF writer fail ("codec configuration error") and left
# another file's sizes and offsets in a PNG's EXIF. (EXIF 2.3, "TIFF Rev. 6.0 attributes".)
_TIFF_DESCRIPTIVE_TAGS = frozenset({0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x013C, 0x8298,
                                    _EXIF_IFD, 0x8825})  # description, make, model, software,


def _drop_tiff_layout_tags(exif: Image.Exif) -> None:
    for tag in [t for t in exif if t not in _TIFF_DESCRIPTIVE_TAGS]:
        del exif[tag]


def _first_line(message: object) -> str:
    text = str(message).strip()
    return text.splitlines()[0].strip() if text else type(message).__name__


def _orientation(exif: Image.Exif, path: Path) -> int:
    """EXIF orientation 1-8; a value of another type or range is ignored with a warning (the
    pixels are used as stored) and removed from ``exif``."""
    value = exif.get(_ORIENTATION, 1)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 8:
        return value
    if value is not None:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        warnings.warn(f"{path}: EXIF orientation {shown} is not 1-8; ignored", stacklevel=4)
    with contextlib.suppress(KeyError):
        del exif[_ORIENTATION]
    return 1


def _metadata(img: Image.Image, exif: Image.Exif, path: Path) -> tuple[Image.Image, ImageMetadata]:
    """The image's :class:`ImageMetadata` (``exif``: its EXIF, orientation already applied to
    the pixels and removed here); CMYK/Lab with a profile is converted to sRGB here."""
    icc = img.info.get("icc_profile") or None
    dpi = img.info.get("dpi")
    if img.mode in ("CMYK", "LAB") and icc:
        from PIL import ImageCms

        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            img = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB") or img
        except (ImageCms.PyCMSError, OSError, ValueError):
            warnings.warn(f"{path}: unreadable {img.mode} colour profile; converting without it", stacklevel=4)
        icc = None  # the pixels are now sRGB (or a plain conversion): the old profile no longer applies
    elif img.mode in ("CMYK", "LAB"):
        icc = None
    try:
        dpi_pair = (float(dpi[0]), float(dpi[1])) if dpi else None
    except (TypeError, ValueError, IndexError):
        dpi_pair = None
    with contextlib.suppress(KeyError):
        del exif[_ORIENTATION]  # applied to the pixels: viewers must not rotate them again
    exif_bytes = None
    if len(exif):
        try:
            exif_bytes = exif.tobytes()
        except (*_DECODE_ERRORS, UnicodeError) as exc:
            warnings.warn(f"{path}: EXIF data that cannot be written back dropped ({exc})", stacklevel=4)
    return img, ImageMetadata(exif=exif_bytes, icc_profile=icc, dpi=dpi_pair)


_ORIENTATION = 0x0112


# What each EXIF orientation does to a Pillow image (as ImageOps.exif_transpose), and those that
# swap width and height.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


_SWAPS = (5, 6, 7, 8)


# numpy equivalents of EXIF orientations 2-8 (what ImageOps.exif_transpose does to a Pillow image)
_ORIENT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}
