"""Reading and writing images for super-resolution, with every failure as an :class:`ImageError`.

Images come back as float64 arrays on the [0, 1] scale: ``(H, W, 3)`` for colour, ``(H, W)`` for
greyscale, plus an optional ``(H, W)`` alpha plane and the source bit depth (8 or 16), so the
output can be written back at the input's precision, and the file's :class:`ImageMetadata`
(EXIF, ICC profile, DPI), so the output keeps it.

Colour management: the network sharpens the encoded values, so an RGB or grey image's ICC
profile still describes the result and is passed through unchanged. CMYK/Lab images are
converted to sRGB through their profile (when they have one) and written untagged, i.e. sRGB.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from vdsr.constants import DEFAULT_MAX_PIXELS
from vdsr.errors import ImageError, TooLarge
from vdsr.io.canvas import Canvas
from vdsr.io.fileio import atomic_path
from vdsr.pixels import peak, to_uint, to_unit
from vdsr.sizes import check_output_pixels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
__all__ = ["IMAGE_SUFFIXES", "OUTPUT_FORMATS", "OUTPUT_SUFFIXES", "ImageMetadata",
           "LoadedImage", "output_format", "decode_image", "load_image",
           "probe", "probe_image", "bundled_photo",
           "save_image", "encode_png", "list_images", "to_pil", "to_uint"]


# Output formats by name (``vdsr upscale --format``) and the file extensions that select them.
OUTPUT_FORMATS: dict[str, str] = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "tiff": "TIFF", "bmp": "BMP"}
_EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF",
               ".tiff": "TIFF", ".webp": "WEBP"}
OUTPUT_SUFFIXES = tuple(_EXTENSIONS)
_EXIF_IFD, _EXIF_WIDTH, _EXIF_HEIGHT = 0x8769, 0xA002, 0xA003
# PNG text chunks (tEXt/zTXt/iTXt) Pillow may decompress, per chunk and in all: Pillow's default
# of 1 MB per chunk refuses valid files (a 20 MB zTXt); this stays bounded.
MAX_TEXT_BYTES = 64 * 2**20
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


# scikit-image's bundled photos that vdsr uses (the recipe check, int8 calibration, `vdsr demo`)
# and their files in ``skimage.data.data_dir``.
_BUNDLED_FILES = {"astronaut": "astronaut.png", "camera": "camera.png", "chelsea": "chelsea.png",
                  "coffee": "coffee.png", "coins": "coins.png", "moon": "moon.png", "rocket": "rocket.jpg",
                  "hubble_deep_field": "hubble_deep_field.jpg", "immunohistochemistry": "ihc.png"}


def bundled_photo(name: str) -> NDArray[np.uint8]:
    """``skimage.data.<name>()``: one of scikit-image's bundled photos, ``(H, W)`` or ``(H, W, 3)``
    uint8, decoded by Pillow from ``skimage.data.data_dir``. The same pixels (tested) without what
    ``skimage.data``'s loaders import (scipy, imageio: 40 MB of a first run's peak memory); the
    loader itself where the file is not there."""
    from skimage import data

    path = Path(data.data_dir) / _BUNDLED_FILES.get(name, "")
    if name in _BUNDLED_FILES and path.is_file():
        with Image.open(path) as img:
            if img.mode in ("L", "RGB"):  # what the loaders return for these files; else theirs
                return np.asarray(img)
    return np.asarray(getattr(data, name)())


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
    with _pillow_limits(), warnings.catch_warnings():
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


def _header_orientation(img: Image.Image, path: Path) -> int:
    """The EXIF orientation an opened, not yet decoded, image states in its header (1 when it
    states none, or nothing readable: :func:`_decode` warns about that, once)."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # a PNG's EXIF may follow the pixels: Pillow would decode them to find it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _orientation(_read_exif(img, path), path)


def _read_exif(img: Image.Image, path: Path) -> Image.Exif:
    """The image's EXIF; a damaged block loses the metadata (all of it, or the unreadable
    parts), never the pixels, and says so in one warning naming the file.

    The raw block is parsed first on its own: Pillow parses it while opening a JPEG, hides a
    failure and then reports no EXIF at all.
    """
    failure: Exception | None = None
    with warnings.catch_warnings(record=True) as pillow_says:
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
# date, artist, host, copyright, the EXIF and GPS sub-IFDs


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


def _write_tiff16(target: Path | BinaryIO, pixels: NDArray[Any], alpha: NDArray[Any] | None,
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
    if isinstance(target, Path):
        with atomic_path(target) as tmp:
            tifffile.imwrite(tmp, np.ascontiguousarray(data), photometric="rgb", compression="zlib", **extra)
    else:
        tifffile.imwrite(target, np.ascontiguousarray(data), photometric="rgb", compression="zlib", **extra)


def output_format(path: Path) -> str:
    """Pillow's format name (``"PNG"``, ``"JPEG"``, ...) that ``path``'s extension selects."""
    ext = path.suffix.lower()
    if ext not in _EXTENSIONS:
        raise ImageError(f"{path}: cannot write '{ext}' files (use .png, .jpg, .webp, .tif or .bmp)")
    return _EXTENSIONS[ext]


def _save_options(fmt: str, metadata: ImageMetadata | None, size: tuple[int, int],
                  quality: int) -> dict[str, object]:
    """Pillow ``save`` keywords for ``fmt``: quality, and the metadata the format can hold.

    EXIF's pixel-size tags, where present, are set to the output ``size`` (width, height).
    """
    options: dict[str, object] = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
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

    The format follows the extension (.png, .jpg/.jpeg, .webp, .tif/.tiff, .bmp). 16-bit output
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
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ImageError(f"{path}: output folder {folder} does not exist")
    deep_colour = bit_depth == 16 and pixels.ndim == 3
    if deep_colour and fmt != "TIFF":
        warnings.warn(f"{path}: 16-bit colour is written with 8 bits per channel "
                      "(write .tif to keep 16 bits)", stacklevel=2)
    try:
        if deep_colour and fmt == "TIFF":
            _write_tiff16(path, pixels, alpha, metadata)
            return
        with atomic_path(path) as tmp:
            img.save(tmp, format=fmt, **_save_options(fmt, metadata, img.size, quality))
    except OSError as exc:
        raise ImageError(f"{path}: cannot write ({exc.strerror or exc})") from None
