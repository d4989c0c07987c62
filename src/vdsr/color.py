"""BT.601 YCbCr conversion with MATLAB's constants.

MATLAB's ``rgb2ycbcr`` on a double image in [0, 1] returns Y in [16/255, 235/255] and Cb/Cr in
[16/255, 240/255]. The published VDSR numbers are computed on that Y channel, so these functions
reproduce MATLAB's matrix and offsets exactly (not the JPEG full-range variant).

All functions take and return float arrays (NumPy or anything array-like) on the [0, 1] scale,
with channels last: ``(..., 3)``; raw integer pixels are refused (:func:`vdsr.pixels.require_unit`),
as a 0-255 image would otherwise give a Y 255 times too large.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from vdsr.errors import InvalidArgument, PixelScaleError
from vdsr.pixels import require_unit

# MATLAB rgb2ycbcr: ycbcr = offset + M * rgb, with rgb in [0, 1] and the result on [0, 255].
_RGB2YCBCR = np.array(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ],
    dtype=np.float64,
)
_OFFSET = np.array([16.0, 128.0, 128.0], dtype=np.float64)
_YCBCR2RGB = np.linalg.inv(_RGB2YCBCR)


def _check_last_axis(image: NDArray[np.floating], name: str) -> None:
    if image.ndim < 1 or image.shape[-1] != 3:
        raise InvalidArgument(f"{name} expects an array with 3 channels last, got shape {image.shape}")


def rgb2ycbcr(rgb: NDArray[np.floating]) -> NDArray[np.float64]:
    """RGB in [0, 1] (shape ``(..., 3)``) to YCbCr in [0, 1] (Y in [16/255, 235/255])."""
    rgb = np.asarray(require_unit(rgb, "rgb2ycbcr"), dtype=np.float64)
    _check_last_axis(rgb, "rgb2ycbcr")
    return (rgb @ _RGB2YCBCR.T + _OFFSET) / 255.0


def rgb2y(rgb: NDArray[np.floating]) -> NDArray[np.float64]:
    """The Y channel alone of :func:`rgb2ycbcr`: RGB ``(..., 3)`` in [0, 1] to ``(...)`` in [0, 1]."""
    rgb = np.asarray(require_unit(rgb, "rgb2y"), dtype=np.float64)
    _check_last_axis(rgb, "rgb2y")
    return (rgb @ _RGB2YCBCR[0] + _OFFSET[0]) / 255.0


def ycbcr2rgb(ycbcr: NDArray[np.floating]) -> NDArray[np.float64]:
    """YCbCr in [0, 1] (shape ``(..., 3)``) back to RGB in [0, 1], as MATLAB's ``ycbcr2rgb``.

    The result is not clipped: out-of-gamut values are the caller's to clip or keep.
    """
    ycbcr = np.asarray(require_unit(ycbcr, "ycbcr2rgb"), dtype=np.float64)
    _check_last_axis(ycbcr, "ycbcr2rgb")
    return (ycbcr * 255.0 - _OFFSET) @ _YCBCR2RGB.T


def _require_float(x: torch.Tensor, name: str) -> None:
    # Dtype only: a range check would read a GPU tensor back on every tile.
    if not x.is_floating_point():
        raise PixelScaleError(f"{name} expects floats on [0, 1], got {x.dtype} values")


def _mix(matrix: NDArray[np.floating], planes: list[torch.Tensor], rows: range) -> list[torch.Tensor]:
    """``matrix[i] . planes`` for each row ``i``, as separate multiplies and adds in a fixed order
    (no BLAS): the same bits on every device and for every region of an image."""
    out = []
    for i in rows:
        acc = planes[0] * float(matrix[i, 0])
        for j in (1, 2):
            acc = acc + planes[j] * float(matrix[i, j])
        out.append(acc)
    return out


def rgb2ycbcr_tensor(rgb: torch.Tensor, channels: str = "ycbcr") -> torch.Tensor:
    """:func:`rgb2ycbcr` for channels-first tensors: ``(..., 3, H, W)`` in [0, 1] -> YCbCr.

    ``channels`` picks the planes returned: ``"ycbcr"`` (3), ``"y"`` (1) or ``"cbcr"`` (2).
    """
    if rgb.ndim < 3 or rgb.shape[-3] != 3:
        raise InvalidArgument(f"rgb2ycbcr_tensor expects (..., 3, H, W), got {tuple(rgb.shape)}")
    _require_float(rgb, "rgb2ycbcr_tensor")
    rows = {"ycbcr": range(3), "y": range(1), "cbcr": range(1, 3)}[channels]
    planes = list(rgb.unbind(-3))
    mixed = _mix(_RGB2YCBCR, planes, rows)
    return torch.stack([(m + float(_OFFSET[i])) / 255.0 for i, m in zip(rows, mixed, strict=True)], -3)


def ycbcr2rgb_tensor(ycbcr: torch.Tensor) -> torch.Tensor:
    """:func:`ycbcr2rgb` for channels-first tensors: ``(..., 3, H, W)`` -> RGB, unclipped."""
    if ycbcr.ndim < 3 or ycbcr.shape[-3] != 3:
        raise InvalidArgument(f"ycbcr2rgb_tensor expects (..., 3, H, W), got {tuple(ycbcr.shape)}")
    _require_float(ycbcr, "ycbcr2rgb_tensor")
    planes = [p * 255.0 - float(_OFFSET[i]) for i, p in enumerate(ycbcr.unbind(-3))]
    return torch.stack(_mix(_YCBCR2RGB, planes, range(3)), -3)


# The same matrices for code that rebuilds the conversion elsewhere (the RGB ONNX graph).
RGB2YCBCR, YCBCR_OFFSET, YCBCR2RGB = _RGB2YCBCR, _OFFSET, _YCBCR2RGB
