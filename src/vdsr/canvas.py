"""Where an upscaled image is assembled block by block, in the form it will be written.

The engine hands over finished blocks (:meth:`vdsr.engine.Upscaler.blocks`); a :class:`Canvas`
puts them straight into the image that gets encoded, so a result exists once, at its final bit
depth: a Pillow image for everything Pillow writes (8-bit grey/RGB/with alpha, 16-bit grey), a
NumPy array for 16-bit colour (written through tifffile) and for the Python API.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = ["Canvas", "canvas_for"]

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
        if self.bit_depth == 8 and block.dtype == np.uint16:
            block = np.clip(np.round(block / 65535.0 * 255.0), 0, 255).astype(np.uint8)
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


def canvas_for(height: int, width: int, channels: int, bit_depth: int, path: Path | None = None,
               fmt: str | None = None) -> tuple[Canvas, int]:
    """A canvas for writing ``path`` (format from its extension, or ``fmt``; ``None``: PNG), and
    the channels it takes. Warns when the format cannot hold alpha (JPEG, BMP: dropped) or 16-bit
    colour (all but TIFF: written with 8 bits)."""
    from vdsr.images import output_format

    name = str(path) if path is not None else "output"
    fmt = fmt or (output_format(path) if path is not None else "PNG")
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
    return Canvas(height, width, channels, bit_depth), channels
