"""MATLAB-exact ``modcrop`` and ``imresize(..., 'bicubic')``: one core, a NumPy face and a torch face.

The core is :func:`axis_weights`: for one axis, which input samples each output sample reads and
with what weight, as MATLAB's ``imresize`` computes them (its ``contributions``): the Keys cubic
kernel (a = -0.5), pixel-centre alignment, a kernel widened by ``1/scale`` when downscaling
(antialiasing), weights normalised to sum 1, and the image extended at its borders by mirroring
(``symmetric``: ``x1 x0 | x0 x1 ...``), folded into the indices. Resizing is separable: axis 0
(rows) first, then axis 1, each a weighted sum of ``taps`` gathered samples.

Both faces (:func:`imresize` on NumPy arrays, :func:`resize_tensor` on tensors, also for a
region of the output) sum the taps in the same order with separate multiplies and adds, so
they give the same bits, whole image or region by region. That is what lets the upscaler build
each tile's bicubic input straight from the low-resolution image (:mod:`vdsr.engine`).

``tests/test_protocol.py`` proves the result against MATLAB's own output for Set5 butterfly
(< 1e-6 on the 0-255 scale) and bit for bit against the ``resize-right`` package (Shocher et al.,
2020; ``pad_mode="symmetric"``), whose arithmetic this follows and which it replaced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from vdsr.errors import InvalidArgument
from vdsr.sizes import require_positive_scale

MAX_OUTPUT_PIXELS = 1 << 31  # guards against absurd scales before any memory is asked for
_EPS = float(np.finfo(np.float32).eps)  # MATLAB's and resize-right's tolerance at tap borders
_SUPPORT = 4.0  # the cubic kernel's width in input samples


def modcrop(image: NDArray[Any], scale: int) -> NDArray[Any]:
    """Crop the bottom/right so that height and width are multiples of ``scale``.

    ``image`` is ``(H, W)`` or ``(H, W, C)``; integer division fixes the notes' float-index bug.
    """
    if not isinstance(scale, (int, np.integer, float)) or not math.isfinite(scale) \
            or scale < 1 or int(scale) != scale:
        raise InvalidArgument(f"modcrop needs a positive integer scale, got {scale}")
    if image.ndim not in (2, 3):
        raise InvalidArgument(f"modcrop expects (H, W) or (H, W, C), got shape {image.shape}")
    scale = int(scale)
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale, ...]


def matlab_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """MATLAB's output size for ``imresize(img, scale)``: ``ceil(scale * size)``.

    A tiny tolerance keeps e.g. ``255 * (1/3)`` from becoming 86 through float error. (The
    upscaler's own size rule is :func:`vdsr.sizes.upscaled_size`: ``round``.)
    """
    return (
        max(1, math.ceil(height * scale - 1e-9)),
        max(1, math.ceil(width * scale - 1e-9)),
    )


def cubic(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """MATLAB's bicubic kernel (Keys, a = -0.5) at distances ``x``."""
    absx = np.abs(x)
    absx2 = absx**2
    absx3 = absx**3
    return ((1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1.0)
            + (-0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0) * ((1.0 < absx) & (absx <= 2.0)))


@dataclass(frozen=True, eq=False)
class AxisWeights:
    """The bicubic weights of one axis: output sample ``o`` is
    ``sum_t weights[o, t] * input[indices[o, t]]``, taps summed in order ``t = 0, 1, ...``.

    ``indices`` are ``(out, taps)`` int64 in ``[0, in_size)`` (borders already mirrored);
    ``weights`` are ``(out, taps)`` float64 summing to 1 per row.
    """

    indices: NDArray[np.int64]
    weights: NDArray[np.float64]
    in_size: int

    @property
    def out_size(self) -> int:
        return int(self.indices.shape[0])

    def part(self, start: int, stop: int) -> AxisWeights:
        """The weights of output samples ``start:stop`` alone."""
        return AxisWeights(self.indices[start:stop], self.weights[start:stop], self.in_size)

    def span(self) -> tuple[int, int]:
        """``(first, last + 1)``: the input samples these outputs read."""
        return int(self.indices.min()), int(self.indices.max()) + 1

    def shifted(self, offset: int) -> AxisWeights:
        """The same weights reading an input cut at ``offset`` (``input[offset:]``)."""
        return AxisWeights(self.indices - offset, self.weights, self.in_size - offset)


def _mirror(index: NDArray[np.int64], size: int) -> NDArray[np.int64]:
    """Fold indices outside ``[0, size)`` back in the way ``numpy.pad(mode="symmetric")`` extends
    an axis (edge sample repeated), for pads of any width (period ``2 * size``)."""
    period = np.mod(index, 2 * size)
    return np.where(period < size, period, 2 * size - 1 - period).astype(np.int64)


@lru_cache(maxsize=64)
def axis_weights(in_size: int, out_size: int, scale: float) -> AxisWeights:
    """MATLAB's bicubic weights for resizing one axis of ``in_size`` samples to ``out_size``.

    ``scale`` sets the sampling grid and, below 1, the antialiasing kernel (``imresize`` with a
    scale and an output size: the size wins, the scale sets the kernel). Cached: the weights of an
    axis are reused by every tile and every image of the same size.
    """
    if in_size < 1 or out_size < 1:
        raise InvalidArgument(f"cannot resize an axis of {in_size} samples to {out_size}")
    require_positive_scale(scale)
    support = _SUPPORT if scale >= 1.0 else _SUPPORT / scale
    if support > 4 * in_size + 8:  # a kernel far wider than the image (found by the fuzz test)
        raise InvalidArgument(f"imresize scale {scale:g} is too small for an axis of {in_size} samples")
    out = np.arange(out_size, dtype=np.float64)
    grid = out / scale + (in_size - 1) / 2 - (out_size - 1) / (2 * scale)  # output centres, input units
    left = np.ceil(grid - support / 2 - _EPS).astype(np.int64)
    fov = left[:, None] + np.arange(math.ceil(support - _EPS), dtype=np.int64)
    # Distances are taken after shifting both sides by the left padding, as resize-right does
    # (the float sums then round the same way).
    pad = -int(fov[0, 0])
    distance = (grid + pad)[:, None] - (fov + pad)
    weights = cubic(distance) if scale >= 1.0 else scale * cubic(scale * distance)
    total = weights.sum(1, keepdims=True)
    total[total == 0] = 1
    return AxisWeights(_mirror(fov, in_size), weights / total, in_size)


def _check_size(size: tuple[int, int]) -> None:
    if size[0] < 1 or size[1] < 1 or size[0] * size[1] > MAX_OUTPUT_PIXELS:
        raise InvalidArgument(f"imresize output size {size} is empty or too large")


def _axis_order(factors: tuple[float, float]) -> list[int]:
    """Which axes to resize, in MATLAB's and resize-right's order: the smaller factor first
    (axis 0 first on a tie), axes with a factor of exactly 1 left alone."""
    return [a for a in sorted((0, 1), key=lambda a: factors[a]) if factors[a] != 1.0]


# -- the NumPy face ------------------------------------------------------------------------------
def _apply_numpy(arr: NDArray[np.float64], axis: int, aw: AxisWeights) -> NDArray[np.float64]:
    moved = np.moveaxis(arr, axis, 0)
    shape = (aw.out_size,) + (1,) * (moved.ndim - 1)
    out = moved[aw.indices[:, 0]]  # a gathered copy: multiplied and summed into in place
    out *= aw.weights[:, 0].reshape(shape)
    for t in range(1, aw.indices.shape[1]):
        tap = moved[aw.indices[:, t]]
        tap *= aw.weights[:, t].reshape(shape)
        out += tap
        del tap
    return np.moveaxis(out, 0, axis)


def imresize(
    image: NDArray[Any],
    scale: float | None = None,
    size: tuple[int, int] | None = None,
) -> NDArray[np.float64]:
    """Bicubic resize exact to MATLAB's ``imresize(image, scale, 'bicubic')``.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array of any real dtype; values are not rescaled.
        scale: the factor (``1/3`` to downscale by 3). Give ``scale`` or ``size``.
        size: the output ``(height, width)``; when both are given, ``size`` wins and ``scale``
            sets the kernel (as MATLAB does for non-integer output sizes).

    Returns:
        float64 array of the output size, unclipped and unrounded (MATLAB's double output).
    """
    if scale is None and size is None:
        raise InvalidArgument("imresize needs a scale or a size")
    if scale is not None:
        require_positive_scale(scale)
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise InvalidArgument(f"imresize expects a non-empty (H, W) or (H, W, C), got shape {arr.shape}")
    h, w = arr.shape[:2]
    if size is None:
        assert scale is not None
        size = matlab_size(h, w, scale)
    _check_size(size)
    factors = (float(scale), float(scale)) if scale is not None else (size[0] / h, size[1] / w)
    out = arr
    for axis in _axis_order(factors):
        out = _apply_numpy(out, axis, axis_weights(arr.shape[axis], size[axis], factors[axis]))
    return np.ascontiguousarray(out) if out is not arr else arr.copy()


# -- the torch face ------------------------------------------------------------------------------
def _apply_tensor(x: torch.Tensor, dim: int, aw: AxisWeights) -> torch.Tensor:
    index = torch.from_numpy(aw.indices).to(x.device)
    weights = torch.from_numpy(aw.weights).to(x.device, x.dtype)
    shape = [1] * x.ndim
    shape[dim] = aw.out_size
    out = x.index_select(dim, index[:, 0]) * weights[:, 0].reshape(shape)
    for t in range(1, aw.indices.shape[1]):
        out = out + x.index_select(dim, index[:, t]) * weights[:, t].reshape(shape)
    return out


def resize_tensor(x: torch.Tensor, rows: AxisWeights, cols: AxisWeights) -> torch.Tensor:
    """Resize the last two dimensions of ``x`` with the given weights: rows first, then columns.

    ``rows``/``cols`` may be a :meth:`AxisWeights.part` (a region of the output) and
    :meth:`AxisWeights.shifted` (reading a cut of the input). In float64 the result equals
    :func:`imresize`'s, bit for bit, on the same pixels.
    """
    return _apply_tensor(_apply_tensor(x, x.ndim - 2, rows), x.ndim - 1, cols)


def imresize_tensor(image: torch.Tensor, scale: float, size: tuple[int, int]) -> torch.Tensor:
    """:func:`imresize` for ``(..., H, W)`` tensors on any device, in the tensor's dtype."""
    if image.ndim < 2 or 0 in image.shape:
        raise InvalidArgument(f"imresize_tensor expects a non-empty (..., H, W), got {tuple(image.shape)}")
    require_positive_scale(scale)
    _check_size(size)
    h, w = image.shape[-2:]
    if (h, w) == tuple(size) and scale == 1.0:
        return image.clone()
    return resize_tensor(image, axis_weights(h, size[0], float(scale)), axis_weights(w, size[1], float(scale)))


# -- the protocol's uses ---------------------------------------------------------------------------
def degrade(hr: NDArray[np.float64], scale: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The training degradation: ``modcrop`` then MATLAB bicubic down by ``scale`` and back up.

    Returns ``(hr, bicubic)``, both float64 on ``hr``'s scale, unclipped.
    """
    hr = modcrop(hr, scale)
    return hr, imresize(imresize(hr, 1.0 / scale), float(scale))


def downscale_8bit(hr: NDArray[np.float64], scale: int) -> NDArray[np.float64]:
    """The low-resolution image of the benchmark protocol: MATLAB bicubic ``1/scale`` of an HR image
    in [0, 1], rounded to 8 bits as a saved file would be. Returns 0-255 float64 values."""
    return np.clip(np.round(imresize(hr * 255.0, 1.0 / scale)), 0, 255)
