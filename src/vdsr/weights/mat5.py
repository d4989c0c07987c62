"""A MAT-file v5 checked before scipy reads it: only what a MatConvNet model can hold.

MAT-file v5 (MathWorks, "MAT-File Format"): element type codes and array classes. scipy's
reader (1.17) is not hardened for untrusted files (its docs say so): it indexes a table with a
data element's type code unchecked and crashes the process (SIGSEGV) on a code it has no dtype
for (scipy/scipy#25349), for instance a flags word that claims an imaginary part which is not
there. So the file is first checked to hold only what a MatConvNet model can: numbers, text,
cells and structs, every element where scipy will look for it.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

from vdsr.errors import WeightsError

__all__ = ["check_mat5"]

_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED, _MI_UTF8 = 1, 5, 6, 14, 15, 16
_MAT5_DATA_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17, 18})
_MX_CELL, _MX_STRUCT, _MX_CHAR = 1, 2, 4
_MX_NUMERIC = range(6, 16)  # double, single, int8 ... uint64
_MAT5_MAX_NESTING = 32
_MAT5_MAX_INFLATED = 1 << 30  # a compressed variable may not decompress to more than 1 GiB


def check_mat5(data: bytes, path: Path) -> None:
    """Raise :class:`WeightsError` unless the MAT v5 file ``data`` holds only numeric, text, cell
    and struct arrays, each laid out as scipy's reader expects (see the module's note)."""
    _Mat5(data, path).variables(data[128:], compressed=False)


class _Mat5:
    """The walk over one file's elements: variables, then each matrix and what it nests."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.order = "<" if data[126:128] == b"IM" else ">"
        self.path = path

    def fail(self, why: str) -> WeightsError:
        return WeightsError(f"{self.path}: not a MAT file of numbers, cells and structs ({why})")

    def element(self, buf: bytes, pos: int) -> tuple[int, bytes, int]:
        """``(type, data, next position)`` of the element at ``pos``."""
        if len(buf) - pos < 8:
            raise self.fail("an element runs past its end")
        mdtype, nbytes = struct.unpack_from(self.order + "II", buf, pos)
        if mdtype >> 16:  # a small element: its size in the upper half, its data in the tag
            mdtype, nbytes = mdtype & 0xFFFF, mdtype >> 16
            if nbytes > 4:
                raise self.fail(f"a small element of {nbytes} bytes")
            return mdtype, buf[pos + 4:pos + 4 + nbytes], pos + 8
        end = pos + 8 + nbytes
        if end > len(buf):
            raise self.fail("an element runs past its end")
        return mdtype, buf[pos + 8:end], end + (0 if mdtype == _MI_COMPRESSED else -nbytes % 8)

    def expect(self, buf: bytes, pos: int, types: frozenset[int] | tuple[int, ...], what: str) -> tuple[bytes, int]:
        mdtype, body, pos = self.element(buf, pos)
        if mdtype not in types:
            raise self.fail(f"{what} has element type {mdtype}")
        return body, pos

    def variables(self, buf: bytes, compressed: bool) -> None:
        pos = 0
        while len(buf) - pos >= 8:
            mdtype, body, pos = self.element(buf, pos)
            if mdtype == _MI_COMPRESSED and not compressed:
                inflate = zlib.decompressobj()
                try:
                    inner = inflate.decompress(body, _MAT5_MAX_INFLATED)
                except zlib.error as exc:
                    raise self.fail(f"corrupt compressed data: {exc}") from None
                if inflate.unconsumed_tail:
                    raise self.fail(f"a compressed variable over {_MAT5_MAX_INFLATED >> 20} MB")
                self.variables(inner, compressed=True)
            elif mdtype == _MI_MATRIX:
                self.matrix(body, 1)
            else:
                raise self.fail(f"a variable of element type {mdtype}")

    def matrix(self, body: bytes, depth: int) -> None:
        """One array: its flags, dimensions and name, then its data by class."""
        if depth > _MAT5_MAX_NESTING:
            raise self.fail(f"nested more than {_MAT5_MAX_NESTING} levels deep")
        if not body:
            return  # an empty matrix, as MATLAB writes an empty cell
        flags, pos = self.expect(body, 0, (_MI_UINT32,), "array flags")
        dims, pos = self.expect(body, pos, (_MI_INT32, _MI_UINT32), "array dimensions")
        _, pos = self.expect(body, pos, (_MI_INT8, _MI_UTF8), "array name")
        if len(flags) != 8 or len(dims) % 4 or len(dims) < 8:
            raise self.fail("bad array flags or dimensions")
        (word,) = struct.unpack_from(self.order + "I", flags)
        cls, imaginary = word & 0xFF, bool(word & 0x800)
        sizes = struct.unpack(self.order + f"{len(dims) // 4}i", dims)
        if any(d < 0 for d in sizes):
            raise self.fail("negative dimensions")
        count = math.prod(sizes)
        if cls in _MX_NUMERIC or cls == _MX_CHAR:
            for part in ("real part", "imaginary part")[: 2 if imaginary else 1]:
                _, pos = self.expect(body, pos, _MAT5_DATA_TYPES, part)
        elif cls == _MX_CELL:
            for _ in range(count):
                cell, pos = self.expect(body, pos, (_MI_MATRIX,), "a cell")
                self.matrix(cell, depth + 1)
        elif cls == _MX_STRUCT:
            self.struct_fields(body, pos, count, depth)
        else:
            raise self.fail(f"MATLAB array class {cls}")

    def struct_fields(self, body: bytes, pos: int, count: int, depth: int) -> None:
        length, pos = self.expect(body, pos, (_MI_INT32,), "field name length")
        names, pos = self.expect(body, pos, (_MI_INT8,), "field names")
        if len(length) != 4:
            raise self.fail("bad field name length")
        (name_length,) = struct.unpack(self.order + "i", length)
        fields = len(names) // name_length if name_length > 0 else 0
        for _ in range(count * fields):
            field, pos = self.expect(body, pos, (_MI_MATRIX,), "a struct field")
            self.matrix(field, depth + 1)
