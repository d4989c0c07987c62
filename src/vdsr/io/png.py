"""A PNG written as it is made: rows in, compressed file out, so a result never exists whole.

Pillow encodes a PNG from a complete image held in its own 4-bytes-a-pixel layout; for an
8000x6000 result that alone is 183 MiB, besides the result. :class:`PngWriter` takes rows (a
band of tiles at a time) and streams them through zlib, with the same per-row adaptive filter
choice as libpng's default heuristic (the filter whose output has the smallest sum of absolute
signed bytes), so memory stays at one band. The chunks are those of the PNG specification (ISO/IEC
15948): IHDR, iCCP (ICC profile), pHYs (DPI), eXIf (EXIF), IDAT, IEND. Pillow and every PNG reader
decode the result; ``tests/test_png.py`` checks the pixels and the metadata through Pillow.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

__all__ = ["PngWriter"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> grey, grey+alpha, RGB, RGBA
_ROWS_AT_ONCE = 16  # rows filtered together: 5 candidate filters x 16 rows x 24 kB for 8000 RGB pixels
_ABS_SIGNED = np.abs(np.arange(256, dtype=np.uint8).view(np.int8).astype(np.int16)).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _paeth(a: NDArray[np.int16], b: NDArray[np.int16], c: NDArray[np.int16]) -> NDArray[np.int16]:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


class PngWriter:
    """Write a ``width x height`` PNG with ``channels`` (1-4, alpha last) at ``bit_depth`` (8/16)
    to ``stream``, rows in order (:meth:`write_rows`), then :meth:`close`.

    ``icc_profile``, ``dpi`` ``(x, y)`` and ``exif`` (raw bytes, as Pillow's ``getexif().tobytes()``)
    are written as their chunks. ``level``: zlib's compression level (6, as Pillow's default).
    """

    def __init__(self, stream: BinaryIO, width: int, height: int, channels: int, bit_depth: int = 8, *,
                 icc_profile: bytes | None = None, dpi: tuple[float, float] | None = None,
                 exif: bytes | None = None, level: int = 6) -> None:
        if channels not in _COLOUR_TYPES or bit_depth not in (8, 16) or width < 1 or height < 1:
            raise ValueError(f"cannot write a PNG of {width}x{height}, {channels} channels, {bit_depth} bits")
        self.stream, self.width, self.height = stream, width, height
        self.channels, self.bit_depth = channels, bit_depth
        self.bpp = channels * bit_depth // 8  # bytes per pixel: the filters' distance
        self.rows_written = 0
        self._previous: NDArray[np.uint8] = np.zeros(width * self.bpp, dtype=np.uint8)
        self._zlib: Any = zlib.compressobj(level)
        stream.write(_SIGNATURE)
        stream.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth,
                                                 _COLOUR_TYPES[channels], 0, 0, 0)))
        if icc_profile:
            stream.write(_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
        if dpi:
            per_metre = [max(1, round(d / 0.0254)) for d in dpi]
            stream.write(_chunk(b"pHYs", struct.pack(">IIB", per_metre[0], per_metre[1], 1)))
        if exif:
            stream.write(_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))

    def write_rows(self, rows: NDArray[Any]) -> None:
        """The next ``(n, width[, channels])`` rows, uint8 (8 bits) or uint16 (16 bits)."""
        rows = np.asarray(rows)
        if rows.ndim == 2:
            rows = rows[..., None]
        if rows.shape[1:] != (self.width, self.channels) or self.rows_written + len(rows) > self.height:
            raise ValueError(f"rows of shape {rows.shape} do not fit a {self.width}x{self.height}x"
                             f"{self.channels} PNG with {self.rows_written} rows written")
        for start in range(0, len(rows), _ROWS_AT_ONCE):  # the filters' working set: a few MB
            part = rows[start:start + _ROWS_AT_ONCE]
            data = part.astype(">u2" if self.bit_depth == 16 else np.uint8, copy=False)
            raw = np.ascontiguousarray(data).view(np.uint8).reshape(len(part), -1)
            self._zlib_write(self._filtered(raw))
            self.rows_written += len(part)

    def _filtered(self, raw: NDArray[np.uint8]) -> bytes:
        """Each row with its best filter's type byte in front (libpng's sum-of-absolutes choice)."""
        x = raw.astype(np.int16)
        up = np.vstack([self._previous[None].astype(np.int16), x[:-1]])
        left = np.zeros_like(x)
        left[:, self.bpp:] = x[:, :-self.bpp]
        upleft = np.zeros_like(x)
        upleft[:, self.bpp:] = up[:, :-self.bpp]
        candidates = np.stack([x, x - left, x - up, x - (left + up) // 2, x - _paeth(left, up, upleft)])
        filtered = candidates.astype(np.uint8)  # (5, rows, bytes), modulo 256
        cost = _ABS_SIGNED[filtered].sum(axis=2, dtype=np.uint64)  # (5, rows)
        best = cost.argmin(axis=0)
        out = np.empty((raw.shape[0], raw.shape[1] + 1), dtype=np.uint8)
        out[:, 0] = best
        out[:, 1:] = filtered[best, np.arange(raw.shape[0])]
        self._previous = raw[-1].copy()
        return out.tobytes()

    def _zlib_write(self, data: bytes) -> None:
        compressed = self._zlib.compress(data)
        if compressed:
            self.stream.write(_chunk(b"IDAT", compressed))

    def close(self) -> None:
        """Finish the file (all ``height`` rows must have been written)."""
        if self.rows_written != self.height:
            raise ValueError(f"{self.rows_written} of {self.height} rows written")
        tail = self._zlib.flush()
        if tail:
            self.stream.write(_chunk(b"IDAT", tail))
        self.stream.write(_chunk(b"IEND", b""))
