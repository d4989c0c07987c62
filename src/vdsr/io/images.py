"""Reading images for super-resolution, with every failure as an :class:`ImageError`.

A decoded image is a :class:`LoadedImage`: the file's own integers (uint8/uint16; float64 on [0, 1]
for floating-point TIFFs), an optional alpha plane, the source bit depth (8 or 16) so the output
can be written back at the input's precision, and the file's :class:`~vdsr.io.metadata.ImageMetadata`
(EXIF, ICC profile, DPI), so the output keeps it. The pixel and size limits are checked from the
header before anything is decoded. Writing is :mod:`vdsr.io.encode`.

Colour management: the network sharpens the encoded values, so an RGB or grey image's ICC
profile still describes the result and is passed through unchanged. CMYK/Lab images are
converted to sRGB through their profile (when they have one) and written untagged, i.e. sRGB."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from vdsr.constants import DEFAULT_MAX_PIXELS
from vdsr.errors import ImageError, TooLarge
from vdsr.io.metadata import (
    _DECODE_ERRORS,
    _ORIENT,
    _SWAPS,
    _TRANSPOSE,
    ImageMetadata,
    _drop_tiff_layout_tags,
    _first_line,
    _header_orientation,
    _metadata,
    _orientation,
    _read_exif,
)
from vdsr.pixels import peak, to_unit
from vdsr.quiet import catch_warnings
from vdsr.sizes import check_output_pixels

__all__ = ["IMAGE_SUFFIXES", "LoadedImage", "MAX_TEXT_BYTES", "bundled_photo", "decode_image", "list_images", "load_image", "probe", "probe_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".avif", ".gif", ".ppm", ".pgm")


# PNG text chunks (tEXt/zTXt/iTXt) Pillow may decompress, per chunk and in all: Pillow's default
# of 1 MB per chunk refuses valid files (a 20 MB zTXt); this stays bounded.
MAX_TEXT_BYTES = 64 * 2**20


@dataclass
class LoadedImage:
    """A decoded image, kept as the file's own numbers (no float copy: 1 or 2 bytes a sample).

    ``raw`` is ``(H, W, 3)`` RGB or ``(H, W)`` grey: uint8 for 8-bit sources, uint16 for 16-bit
    ones, float64 in [0, 1] for floating-point TIFFs; ``raw_alpha`` is ``(H, W)`` of the same
    dtype, or ``None``. These are raw values (0-255, 0-65535): code that computes on intensities
    takes them through :meth:`floats`, the one door to [0, 1] (:mod:`vdsr.pixels`).
    ``bit_depth`` (8 or 16) is the precision the output is written with.
    """

    raw: NDArray[Any]
    raw_alpha: NDArray[Any] | None
    bit_depth: int
    path: Path
    metadata: ImageMetadata = field(default_factory=ImageMetadata)

    @property
    def height(self) -> int:
        return int(self.raw.shape[0])

    @property
    def width(self) -> int:
        return int(self.raw.shape[1])

    @property
    def peak(self) -> float:
        """The raw value of full intensity: 255, 65535, or 1.0 for float pixels."""
        return peak(self.raw.dtype)

    @property
    def has_alpha(self) -> bool:
        return self.raw_alpha is not None

    def floats(self) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
        """``(pixels, alpha)`` as float64 in [0, 1] (a full-size copy: for small images)."""
        alpha = None if self.raw_alpha is None else to_unit(self.raw_alpha)
        pixels = to_unit(self.raw)
        return (pixels.copy() if pixels is self.raw else pixels), alpha

    def planes(self) -> NDArray[Any]:
        """``(C, H, W)`` channels-first view of the raw pixels and alpha (C = 1, 2, 3 or 4); a
        copy only when there is an alpha plane to join."""
        raw = self.raw if self.raw.ndim == 3 else self.raw[..., None]
        if self.raw_alpha is not None:
            raw = np.concatenate([raw, self.raw_alpha[..., None]], axis=2)
        return raw.transpose(2, 0, 1)


# scikit-image's bundled photos that vdsr uses (the recipe check, int8 calibration, `vdsr demo`),
# copied into vdsr/data/photos (its README gives each one's source and licence).
_PHOTOS = Path(__file__).resolve().parent.parent / "data" / "photos"
_BUNDLED_FILES = {"astronaut": "astronaut.png", "camera": "camera.png", "chelsea": "chelsea.png",
                  "coffee": "coffee.png", "coins": "coins.png", "moon": "moon.png", "rocket": "rocket.jpg",
                  "hubble_deep_field": "hubble_deep_field.jpg", "immunohistochemistry": "ihc.png"}


def bundled_photo(name: str) -> NDArray[np.uint8]:
    """The pixels of ``skimage.data.<name>()`` for one of the photos vdsr ships (``(H, W)`` or
    ``(H, W, 3)`` uint8, decoded by Pillow; tested equal to scikit-image's arrays), without
    scikit-image. :class:`KeyError` for a name that is not one of them."""
    if name not in _BUNDLED_FILES:
        raise KeyError(f"no bundled photo {name!r}; there are {', '.join(sorted(_BUNDLED_FILES))}")
    with Image.open(_PHOTOS / _BUNDLED_FILES[name]) as img:
        return np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; raises if there are none.

    This is the check the notes' code lacked: an empty folder gave ``UnboundLocalError``.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ImageError(f"{folder}: no such file or directory")
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(f"no images found in {folder}")
    return files


def _to_array(img: Image.Image, path: Path) -> tuple[NDArray[Any], NDArray[Any] | None, int]:
    """``(pixels, alpha, bit depth)`` of a decoded Pillow image, as its own integers."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img).astype(np.uint16), None, 16
    if mode == "I":
        # 32-bit integer: how Pillow opens 16-bit greyscale PNG; treat as 16-bit data.
        return np.clip(np.asarray(img), 0, 65535).astype(np.uint16), None, 16
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageError(f"{path}: float image contains NaN or inf values")
        hi = float(arr.max()) if arr.size else 0.0
        if hi > 1.0:  # float images on a 0-255 or 0-65535 scale
            arr = arr / peak(np.uint8 if hi <= 255.0 else np.uint16)
        return np.clip(arr, 0.0, 1.0), None, 16
    if mode == "1":
        img = img.convert("L")
        mode = "L"
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if ("transparency" in img.info or mode == "PA") else "RGB")
        mode = img.mode
    if mode == "LA":
        arr = np.asarray(img)
        return np.ascontiguousarray(arr[..., 0]), np.ascontiguousarray(arr[..., 1]), 8
    if mode == "L":
        return np.asarray(img), None, 8
    if mode == "RGBA":
        arr = np.asarray(img)
        return np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3]), 8
    if mode != "RGB":  # CMYK, YCbCr, LAB, HSV, RGBX, ...
        img = img.convert("RGB")
    return np.asarray(img), None, 8


def load_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS,
               scale: float | None = None, max_output_pixels: int | None = None) -> LoadedImage:
    """Decode ``path`` into a :class:`LoadedImage`, applying EXIF orientation.

    Raises :class:`ImageError` for a missing, empty, non-image, truncated, zero-sized or
    too-large (over ``max_pixels``, the decompression-bomb guard) file, and :class:`TooLarge`
    (``what="output"``) when ``scale`` and ``max_output_pixels`` are given and the upscaled
    image would be over the limit; both limits are checked from the header, before decoding.
    An animated image gives its first frame and a warning; unreadable EXIF data is dropped with
    a warning (the pixels are kept).
    """
    path = Path(path)
    _check_path(path)
    return _decode(path, path, max_pixels, scale, max_output_pixels)


def _check_path(path: Path) -> None:
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file (0 bytes)")
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from None


def decode_image(data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS,
                 scale: float | None = None, max_output_pixels: int | None = None) -> LoadedImage:
    """:func:`load_image` for bytes in memory (uploads): nothing touches the disk."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    return _decode(io.BytesIO(data), Path(name), max_pixels, scale, max_output_pixels)


def probe(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(height, width)`` of the image file as :func:`load_image` will return it (EXIF rotation
    applied), from its header alone, without decoding pixels.

    The cheap checks (missing, empty, not an image, over ``max_pixels``): pass the size to
    :func:`vdsr.sizes.check_output_pixels` to refuse an upscale before anything is decoded. Raises
    :class:`ImageError`/:class:`TooLarge`; :func:`load_image` still finds truncated data.
    """
    path = Path(path)
    _check_path(path)
    return _probe(path, path, max_pixels)


def probe_image(data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """:func:`probe` for encoded ``data`` in memory (uploads)."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    return _probe(io.BytesIO(data), Path(name), max_pixels)


class _PillowLimits:
    """Pillow's process-wide decoder limits, set to ours while any decode runs.

    ``Image.MAX_IMAGE_PIXELS`` is lifted (we check our own limit, with our own message) and the
    PNG text limits raised to :data:`MAX_TEXT_BYTES`. Counted under a lock: concurrent decodes
    (the server's threads) neither restore the values under each other nor leave ours behind.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: tuple[Any, int, int] = (None, 0, 0)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._saved = (Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK,
                               PngImagePlugin.MAX_TEXT_MEMORY)
                Image.MAX_IMAGE_PIXELS = None
                PngImagePlugin.MAX_TEXT_CHUNK = PngImagePlugin.MAX_TEXT_MEMORY = MAX_TEXT_BYTES
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    (Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK,
                     PngImagePlugin.MAX_TEXT_MEMORY) = self._saved


_pillow_limits = _PillowLimits()


def _corrupt(path: Path, exc: BaseException) -> ImageError:
    """The :class:`ImageError` for a Pillow decoding error ``exc``: what is wrong, exactly."""
    msg = _first_line(exc)
    if isinstance(exc, ValueError) and ("MAX_TEXT_CHUNK" in msg or "MAX_TEXT_MEMORY" in msg):
        return ImageError(f"{path}: its PNG text metadata (tEXt/zTXt/iTXt chunks) is over "
                          f"{MAX_TEXT_BYTES // 2**20} MB; such files are not read")
    return ImageError(f"{path}: truncated or corrupt image ({msg})")


def _check_header(img: Image.Image, path: Path, max_pixels: int, scale: float | None,
                  max_output_pixels: int | None) -> None:
    """The limits that the header alone decides: input pixels, zero size, output pixels."""
    w, h = img.size
    if w * h > max_pixels:
        raise TooLarge(str(path), "input", w, h, max_pixels)
    if w == 0 or h == 0:
        raise ImageError(f"{path}: image has zero size ({w}x{h})")
    if scale is not None and max_output_pixels is not None:
        # A rotation swaps the sides; the output's pixel count is the same either way.
        check_output_pixels(str(path), h, w, scale, max_output_pixels)


@contextlib.contextmanager
def _decoding() -> Iterator[None]:
    """Our limits (:data:`_pillow_limits`), and Pillow's own EXIF warnings silenced: they name no
    file and :func:`_read_exif` reports the same problem in one warning that does."""
    with _pillow_limits(), catch_warnings():
        warnings.filterwarnings("ignore", message=r"(Possibly )?[Cc]orrupt EXIF|Metadata Warning",
                                category=UserWarning)
        yield


def _probe(source: Path | io.BytesIO, path: Path, max_pixels: int) -> tuple[int, int]:
    with _decoding():
        try:
            with Image.open(source) as img:
                _check_header(img, path, max_pixels, None, None)
                w, h = img.size
                orientation = _header_orientation(img, path)
        except UnidentifiedImageError:
            raise ImageError(f"{path}: not an image, or an unsupported format") from None
        except ImageError:
            raise
        except _DECODE_ERRORS as exc:
            raise _corrupt(path, exc) from None
    return (w, h) if orientation in _SWAPS else (h, w)


def _decode(source: Path | io.BytesIO, path: Path, max_pixels: int, scale: float | None = None,
            max_output_pixels: int | None = None) -> LoadedImage:
    with _decoding():
        try:
            with Image.open(source) as img:
                _check_header(img, path, max_pixels, scale, max_output_pixels)
                if getattr(img, "n_frames", 1) > 1:
                    warnings.warn(f"{path}: animated image, using the first frame only", stacklevel=3)
                    img.seek(0)
                deep_colour = img.format in ("PNG", "TIFF") and img.mode in ("RGB", "RGBA") and any(
                    ";16" in str(t[3]) for t in img.tile)  # Pillow reads 16-bit colour as 8-bit
                # tifffile reads a TIFF as stored; Pillow's load orients it (and drops the tag).
                stored_orientation = _header_orientation(img, path) if img.format == "TIFF" else 1
                img.load()  # before the EXIF: a PNG's may follow the pixels
                exif = _read_exif(img, path)
                orientation = _orientation(exif, path)
                if img.format == "TIFF":
                    _drop_tiff_layout_tags(exif)
                oriented = img.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else img
                oriented, metadata = _metadata(oriented, exif, path)
                pixels, alpha, depth = _to_array(oriented, path)
                if deep_colour:
                    deep = _tiff16_colour(source, stored_orientation, pixels.shape) if img.format == "TIFF" else None
                    if deep is None:
                        warnings.warn(f"{path}: 16-bit colour is read, and written, with 8 bits per channel "
                                      "(16-bit colour TIFF keeps 16 bits)", stacklevel=3)
                    else:
                        pixels, alpha, depth = deep
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(f"{path}: not an image, or an unsupported format") from None
        except (*_DECODE_ERRORS, Image.DecompressionBombError, MemoryError) as exc:
            raise _corrupt(path, exc) from None
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageError(f"{path}: image has zero size")
    return LoadedImage(raw=pixels, raw_alpha=alpha, bit_depth=depth, path=path, metadata=metadata)


def _tiff16_colour(source: Path | io.BytesIO, orientation: int, shape: tuple[int, ...]
                   ) -> tuple[NDArray[np.uint16], NDArray[np.uint16] | None, int] | None:
    """A 16-bit RGB(A) TIFF's pixels at full depth, read with tifffile (Pillow reads 8 bits).

    Returns ``(pixels, alpha, 16)`` oriented as ``shape`` (Pillow's reading), or ``None`` when the
    file's layout is not the plain one this handles.
    """
    import tifffile

    try:
        if isinstance(source, io.BytesIO):
            source.seek(0)
        with tifffile.TiffFile(source) as tif:
            arr = tif.pages[0].asarray()
    except (ValueError, OSError, IndexError, TypeError, KeyError):
        return None
    if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return None
    arr = _ORIENT.get(orientation, lambda a: a)(arr)
    if arr.shape[:2] != shape[:2]:
        return None
    rgb = np.ascontiguousarray(arr[..., :3])
    alpha = np.ascontiguousarray(arr[..., 3]) if arr.shape[2] == 4 else None
    return rgb, alpha, 16
