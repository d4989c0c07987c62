"""Where an upscaled image goes block by block, in the form it will be written.

The engine hands over finished blocks (:meth:`vdsr.engine.Upscaler.blocks`), a band of tiles
after another. A PNG (the default output, and the server's) is encoded as the bands arrive
(:class:`PngCanvas`, :mod:`vdsr.io.png`): the result never exists whole, so memory stays at one band
whatever the image's size. Other formats are assembled once, at their final bit depth, in the image
that gets encoded (:class:`Canvas`): a Pillow image for what Pillow writes (JPEG, WebP, BMP, 8-bit
TIFF), a NumPy array for 16-bit colour (written through tifffile).
"""

from __future__ import annotations

import warnings
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vdsr.pixels import to_uint

__all__ = ["Canvas", "PngCanvas", "plan", "to_depth"]

_MODES = {(1, 8): "L", (2, 8): "LA", (3, 8): "RGB", (4, 8): "RGBA", (1, 16): "I;16"}


class Canvas:
    """An output image of ``height x width`` with ``channels`` (1-4, alpha last) at ``bit_depth``.

    ``write(y, x, block)`` takes ``(h, w, channels)`` uint8 or uint16 blocks (uint16 blocks on an
    8-bit canvas are rounded to 8 bits: ``round(v / 65535 * 255)``). ``image()`` gives the Pillow
    image (``None`` for 16-bit colour), ``array()`` the pixels as ``(H, W[, C])``.
    """

    def __init__(self, height: int, width: int, channels: int, bit_depth: int = 8) -> None:
        self.height, self.width, self.channels, self.bit_depth = height, width, channels, bit_depth
        mode = _MODES.get((channels, bit_depth))
        self._image: Image.Image | None = Image.new(mode, (width, height)) if mode else None
        self._array: NDArray[Any] | None = None
        if self._image is None:
            self._array = np.zeros((height, width, channels), dtype=np.uint16)

    @property
    def dtype(self) -> type:
        """The dtype blocks should come in."""
        return np.uint16 if self.bit_depth == 16 else np.uint8

    def write(self, y: int, x: int, block: NDArray[Any]) -> None:
        if self._array is not None:
            self._array[y:y + block.shape[0], x:x + block.shape[1]] = block
            return
        assert self._image is not None
        block = to_depth(block, self.bit_depth)
        if self.channels == 1:
            block = block[..., 0]
        self._image.paste(Image.fromarray(np.ascontiguousarray(block)), (x, y))

    def image(self) -> Image.Image | None:
        return self._image

    def array(self) -> NDArray[Any]:
        """The pixels, ``(H, W)`` grey or ``(H, W, C)``; a copy for a Pillow-backed canvas."""
        if self._array is not None:
            return self._array
        assert self._image is not None
        return np.asarray(self._image)


def to_depth(block: NDArray[Any], bit_depth: int) -> NDArray[Any]:
    """Blocks at the canvas's depth: uint16 blocks on an 8-bit output are rounded to 8 bits
    (``round(v / 65535 * 255)``, :func:`vdsr.pixels.to_uint`); others pass as they are."""
    return to_uint(block, 8) if bit_depth == 8 and block.dtype == np.uint16 else block


class PngCanvas:
    """A PNG encoded as its bands arrive: blocks of one band (same ``y``, left to right) are
    gathered, and each completed band is filtered and compressed into ``stream``.

    Should the engine start the image again (it halves the tile on out-of-memory), a block of an
    earlier band resets the stream and the encoding starts over.
    """

    def __init__(self, stream: BinaryIO, height: int, width: int, channels: int, bit_depth: int,
                 options: dict[str, Any]) -> None:
        self.stream, self.height, self.width = stream, height, width
        self.channels, self.bit_depth, self.options = channels, bit_depth, options
        self._start = stream.tell()
        self._begin()

    def _begin(self) -> None:
        from vdsr.io.png import PngWriter

        self.stream.seek(self._start)
        self.stream.truncate()
        self._writer = PngWriter(self.stream, self.width, self.height, self.channels, self.bit_depth,
                                 icc_profile=self.options.get("icc_profile"), dpi=self.options.get("dpi"),
                                 exif=self.options.get("exif"))
        self._band_y, self._band_x = 0, 0
        self._band: NDArray[Any] | None = None

    def write(self, y: int, x: int, block: NDArray[Any]) -> None:
        if y < self._band_y or (y == self._band_y and x < self._band_x):
            self._begin()  # the engine started again (smaller tiles)
        if self._band is not None and y != self._band_y:
            raise ValueError(f"band at row {self._band_y} is incomplete; a block came for row {y}")
        block = to_depth(block, self.bit_depth)
        if self._band is None:
            self._band = np.empty((block.shape[0], self.width, self.channels), dtype=block.dtype)
            self._band_y = y
        self._band[:, x:x + block.shape[1]] = block
        self._band_x = x + block.shape[1]
        if self._band_x == self.width:
            self._writer.write_rows(self._band)
            self._band_y, self._band_x, self._band = y + block.shape[0], 0, None

    def finish(self) -> None:
        self._writer.close()


def plan(channels: int, bit_depth: int, fmt: str = "PNG", name: str = "output") -> tuple[int, int]:
    """The ``(channels, bit depth)`` an output in ``fmt`` (Pillow's format name) holds. Warns,
    naming ``name``, when the format cannot hold alpha (JPEG, BMP: dropped) or 16-bit colour (all
    but TIFF: written with 8 bits)."""
    alpha = channels in (2, 4)
    if alpha and fmt in ("JPEG", "BMP"):
        warnings.warn(f"{name}: {fmt} has no alpha channel; the transparency is dropped "
                      "(write .png, .webp or .tif to keep it)", stacklevel=3)
        channels -= 1
    if bit_depth == 16:
        if channels >= 3 and fmt != "TIFF":
            warnings.warn(f"{name}: 16-bit colour is written with 8 bits per channel "
                          "(write .tif to keep 16 bits)", stacklevel=3)
            bit_depth = 8
        elif channels == 2 or (channels == 1 and fmt not in ("PNG", "TIFF")):
            bit_depth = 8  # grey with alpha (Pillow's LA) and grey JPEG/WebP/BMP hold 8 bits
    return channels, bit_depth
