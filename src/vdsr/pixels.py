"""The pixel contract, written once: what a pixel value means in each dtype.

* Integer arrays hold a file's own values: uint8 on ``[0, 255]``, uint16 on ``[0, 65535]``
  (:func:`peak`). No other integer type is a pixel type.
* Float arrays hold intensities on ``[0, 1]``.

Conversions between the two go through :func:`to_unit` (integers -> floats) and :func:`to_uint`
/ :func:`to_uint_tensor` (floats -> rounded, clipped integers). Functions that compute on the
``[0, 1]`` scale (colour conversion, the benchmark protocol, training data) call
:func:`require_unit` first, so raw integers are refused with :class:`PixelScaleError` instead of
giving an answer 255 times too large (BasicSR's ``_convert_input_type_range`` is the model: scale
by dtype, refuse what you do not know).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vdsr.errors import PixelScaleError

if TYPE_CHECKING:  # torch is imported by the code that has tensors; `import vdsr.pixels` is free of it
    import torch

__all__ = ["PixelScaleError", "bit_depth_dtype", "peak", "require_unit", "require_unit_tensor", "to_uint",
           "to_uint_tensor", "to_unit"]

# The integer pixel types and the value of full intensity in each (torch dtypes by name).
_PEAKS: dict[str, float] = {"uint8": 255.0, "uint16": 65535.0}
# A float image on [0, 1] may overshoot a little (bicubic ringing, unclipped YCbCr -> RGB); values
# past these bounds mean the array is on another scale (e.g. 0-255 floats).
_UNIT_LOW, _UNIT_HIGH = -0.5, 1.5


def _name_and_kind(dtype: Any) -> tuple[str, bool]:
    """A dtype's name (``"uint8"``, ``"float32"``) and whether it is a float type."""
    if type(dtype).__module__ == "torch":  # a torch.dtype, without importing torch here
        return str(dtype).removeprefix("torch."), bool(dtype.is_floating_point)
    np_dtype = np.dtype(dtype)
    return np_dtype.name, np_dtype.kind == "f"


def peak(dtype: Any) -> float:
    """The value of full intensity for a NumPy or torch dtype: 255 (uint8), 65535 (uint16),
    1.0 (floats). Raises :class:`PixelScaleError` for any other type (int32, bool, ...)."""
    name, is_float = _name_and_kind(dtype)
    if name in _PEAKS:
        return _PEAKS[name]
    if is_float:
        return 1.0
    raise PixelScaleError(f"{name} is not a pixel type (uint8, uint16 or float on [0, 1])")


def bit_depth_dtype(bit_depth: int) -> np.dtype[Any]:
    """The unsigned integer dtype that holds ``bit_depth`` (8 or 16) bits a sample."""
    if bit_depth not in (8, 16):
        raise PixelScaleError(f"bit depth must be 8 or 16, got {bit_depth}")
    return np.dtype(np.uint8 if bit_depth == 8 else np.uint16)


def require_unit(array: ArrayLike, name: str) -> NDArray[Any]:
    """``array`` as a float NumPy array, after checking it is on the [0, 1] scale.

    Raises :class:`PixelScaleError` for integer or boolean arrays (a file's raw values: convert
    them with :func:`to_unit`) and for float arrays with values far outside [0, 1] (for example
    0-255 floats). ``name`` is the function that asks, for the message.
    """
    arr = np.asarray(array)
    if arr.dtype.kind != "f":
        raise PixelScaleError(f"{name} expects floats on [0, 1], got {arr.dtype} values "
                              "(raw pixels: convert them with vdsr.pixels.to_unit)")
    if arr.size:
        _check_range(float(np.nanmin(arr)), float(np.nanmax(arr)), name)
    return arr


def require_unit_tensor(x: torch.Tensor, name: str) -> torch.Tensor:
    """:func:`require_unit` for a tensor (checked where it lies; NaN is left to the caller)."""
    if not x.is_floating_point():
        raise PixelScaleError(f"{name} expects floats on [0, 1], got {x.dtype} values "
                              "(raw pixels: convert them with vdsr.pixels.to_unit)")
    if x.numel():
        low, high = x.aminmax()
        _check_range(float(low), float(high), name)
    return x


def _check_range(low: float, high: float, name: str) -> None:
    if low < _UNIT_LOW or high > _UNIT_HIGH:
        raise PixelScaleError(f"{name} expects floats on [0, 1], got values in [{low:g}, {high:g}]")


def to_unit(array: ArrayLike) -> NDArray[np.float64]:
    """Pixels as float64 on [0, 1]: uint8/uint16 divided by their :func:`peak` (a new array);
    floats are taken as already on [0, 1] (a view when they are float64)."""
    arr = np.asarray(array)
    scale = peak(arr.dtype)
    if arr.dtype.kind == "f":
        return arr.astype(np.float64, copy=False)
    out = arr.astype(np.float64)
    out /= scale
    return out


def to_uint(array: ArrayLike, bit_depth: int, *, overwrite: bool = False) -> NDArray[Any]:
    """Pixels as uint8 (``bit_depth`` 8) or uint16 (16), rounded half to even and clipped.

    Floats are read on [0, 1]; integers of the other depth are rescaled
    (``round(v / 65535 * 255)`` from 16 to 8 bits); integers of the same depth are returned as
    they are. ``overwrite=True`` lets a float64 input be used as the scratch space (it is
    changed), so converting a large plane needs no second float copy.
    """
    arr = np.asarray(array)
    target = bit_depth_dtype(bit_depth)
    if arr.dtype == target:
        return arr
    top = peak(target)
    if arr.dtype.kind == "f":
        work = arr if (overwrite and arr.dtype == np.float64) else arr.astype(np.float64)
        np.multiply(work, top, out=work)
    else:
        work = arr.astype(np.float64) / peak(arr.dtype) * top
    np.rint(work, out=work)
    np.clip(work, 0.0, top, out=work)
    return work.astype(target)


def to_uint_tensor(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:func:`to_uint` for a float tensor on [0, 1]: ``dtype`` uint8/uint16 rounded (half to
    even, as NumPy) and clipped; a float ``dtype`` gives the values cast, unrounded."""
    top = peak(dtype)
    if dtype.is_floating_point:
        return x.to(dtype)
    return (x * top).round().clamp(0.0, top).to(dtype)
