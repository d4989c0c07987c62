"""Writing images: the format an output's extension names, the options of each format, 8 or 16
bits, metadata kept where the format can hold it; every file appears atomically (PNGs are
written band by band as they are made: :mod:`vdsr.io.png`)."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vdsr.errors import ImageError
from vdsr.io.canvas import Canvas
from vdsr.io.fileio import atomic_path
from vdsr.io.metadata import _EXIF_HEIGHT, _EXIF_IFD, _EXIF_WIDTH, ImageMetadata
from vdsr.io.outputs import OUTPUT_FORMATS, format_of
from vdsr.pixels import to_uint

__all__ = ["written", "encode_png", "output_format", "png_options", "save_image", "to_pil", "write_canvas"]


def _write_tiff16(target: BinaryIO, pixels: NDArray[Any], alpha: NDArray[Any] | None,
                  metadata: ImageMetadata | None) -> None:
    """16-bit RGB(A) TIFF through tifffile (Pillow writes colour with 8 bits); EXIF is not kept."""
    import tifffile

    data = to_uint(pixels, 16)
    extra: dict[str, Any] = {}
    if alpha is not None:
        data = np.dstack([data, to_uint(alpha, 16)])
        extra["extrasamples"] = [2]  # unassociated alpha, as Pillow writes RGBA
    if metadata is not None and metadata.icc_profile:
        extra["iccprofile"] = metadata.icc_profile
    if metadata is not None and metadata.dpi:
        extra["resolution"], extra["resolutionunit"] = metadata.dpi, "INCH"
    tifffile.imwrite(target, np.ascontiguousarray(data), photometric="rgb", compression="zlib", **extra)


def output_format(path: Path) -> str:
    """Pillow's format name (``"PNG"``, ``"JPEG"``, ...) that ``path``'s extension selects."""
    return OUTPUT_FORMATS[format_of(path)]  # OutputNameRefused for another extension


def _save_options(fmt: str, metadata: ImageMetadata | None, size: tuple[int, int],
                  quality: int) -> dict[str, object]:
    """Pillow ``save`` keywords for ``fmt``: quality, and the metadata the format can hold.

    EXIF's pixel-size tags, where present, are set to the output ``size`` (width, height).
    """
    options: dict[str, object] = {"quality": quality} if fmt in ("JPEG", "WEBP", "AVIF") else {}
    if metadata is None:
        return options
    if metadata.dpi and fmt in ("PNG", "JPEG", "TIFF", "BMP"):
        options["dpi"] = metadata.dpi
    if fmt == "BMP":
        return options
    if metadata.icc_profile:
        options["icc_profile"] = metadata.icc_profile
    if metadata.exif:
        exif = Image.Exif()
        try:
            exif.load(metadata.exif)
            ifd = exif.get_ifd(_EXIF_IFD)
            if _EXIF_WIDTH in ifd or _EXIF_HEIGHT in ifd:
                ifd[_EXIF_WIDTH], ifd[_EXIF_HEIGHT] = size
            options["exif"] = exif.tobytes()
        except (SyntaxError, ValueError, KeyError, TypeError, struct.error):
            options["exif"] = metadata.exif  # unparseable here: passed on as it came
    return options


def to_pil(
    pixels: NDArray[Any], alpha: NDArray[Any] | None = None, bit_depth: int = 8,
    allow_16bit: bool = True,
) -> Image.Image:
    """Float [0, 1] ``(H, W)``/``(H, W, 3)`` pixels (+ alpha) to a rounded 8- or 16-bit PIL image.

    16-bit is kept for greyscale without alpha (Pillow cannot write 16-bit RGB).
    """
    gray = pixels.ndim == 2
    if gray and bit_depth == 16 and allow_16bit and alpha is None:
        return Image.fromarray(np.ascontiguousarray(to_uint(pixels, 16)))  # uint16 -> "I;16"
    base = to_uint(pixels, 8)
    if alpha is not None:
        return Image.fromarray(np.ascontiguousarray(np.dstack([base, to_uint(alpha, 8)])))  # LA/RGBA
    return Image.fromarray(np.ascontiguousarray(base))  # "L" / "RGB"


def encode_png(pixels: NDArray[Any], alpha: NDArray[Any] | None = None,
               bit_depth: int = 8, metadata: ImageMetadata | None = None) -> bytes:
    """The PNG bytes :func:`save_image` would write for a ``.png`` path."""
    buf = io.BytesIO()
    img = to_pil(pixels, alpha, bit_depth)
    img.save(buf, format="PNG", **_save_options("PNG", metadata, img.size, 95))
    return buf.getvalue()


def write_canvas(stream: BinaryIO, fmt: str, canvas: Canvas, metadata: ImageMetadata | None = None,
                 quality: int = 95) -> None:
    """Encode an assembled :class:`~vdsr.io.canvas.Canvas` as ``fmt`` into ``stream``, with
    ``metadata`` where the format holds it (16-bit colour: TIFF through tifffile)."""
    img = canvas.image()
    if img is None:  # 16-bit colour: tifffile
        pixels = canvas.array()
        _write_tiff16(stream, pixels[..., :3], pixels[..., 3] if canvas.channels == 4 else None, metadata)
        return
    img.save(stream, format=fmt, **_save_options(fmt, metadata, img.size, quality))


def png_options(metadata: ImageMetadata | None, size: tuple[int, int]) -> dict[str, Any]:
    """The metadata a PNG of ``size`` (width, height) is written with: ``exif`` (pixel-size tags
    set to ``size``), ``icc_profile``, ``dpi`` (what Pillow would be given)."""
    return dict(_save_options("PNG", metadata, size, 95))


def save_image(
    path: str | os.PathLike[str],
    pixels: NDArray[Any],
    alpha: NDArray[Any] | None = None,
    bit_depth: int = 8,
    metadata: ImageMetadata | None = None,
    quality: int = 95,
) -> None:
    """Write float [0, 1] ``pixels`` (``(H, W)`` or ``(H, W, 3)``) to ``path`` atomically.

    The format follows the extension (.png, .jpg/.jpeg, .webp, .avif, .tif/.tiff, .bmp). 16-bit output
    is kept for PNG/TIFF greyscale and for TIFF colour (through tifffile, without EXIF); other
    formats write colour with 8 bits, with a warning (Pillow cannot write 16-bit RGB).
    JPEG/BMP drop the alpha plane, with a warning unless it is opaque. ``metadata`` (EXIF, ICC
    profile, DPI) is written where the format can hold it (BMP: DPI only); ``quality`` (1-100)
    applies to JPEG and WebP.
    """
    path = Path(path)
    fmt = output_format(path)
    if alpha is not None and fmt in ("JPEG", "BMP"):
        if to_uint(alpha, 8).min() < 255:  # an opaque alpha plane loses nothing
            warnings.warn(f"{path}: {fmt} cannot hold transparency; the alpha channel is dropped "
                          "(write .png, .webp or .tif to keep it)", stacklevel=2)
        alpha = None
    img = to_pil(pixels, alpha, bit_depth, allow_16bit=fmt in ("PNG", "TIFF"))
    deep_colour = bit_depth == 16 and pixels.ndim == 3
    if deep_colour and fmt != "TIFF":
        warnings.warn(f"{path}: 16-bit colour is written with 8 bits per channel "
                      "(write .tif to keep 16 bits)", stacklevel=2)
    with written(path) as tmp:
        if deep_colour and fmt == "TIFF":
            with tmp.open("wb") as stream:
                _write_tiff16(stream, pixels, alpha, metadata)
        else:
            img.save(tmp, format=fmt, **_save_options(fmt, metadata, img.size, quality))


@contextlib.contextmanager
def written(path: Path) -> Iterator[Path]:
    """The one way an image file is written: a temporary file beside ``path``, renamed to it when
    the block ends without an error (:func:`vdsr.io.fileio.atomic_path`). The folder must exist;
    a failing write (disk full, no permission) is an :class:`ImageError` naming ``path``."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ImageError(f"{path}: output folder {folder} does not exist")
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as exc:
        raise ImageError(f"{path}: cannot write ({exc.strerror or exc})") from None
