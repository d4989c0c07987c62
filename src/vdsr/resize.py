"""MATLAB-exact ``modcrop`` and ``imresize(..., 'bicubic')``.

The resampling itself is the ``resize-right`` package (Shocher et al.), which implements
MATLAB's algorithm: Keys cubic kernel (a = -0.5), pixel-centre alignment, and a widened kernel
(antialiasing) when downscaling. MATLAB extends the image by mirroring at the borders; resize-right's
default constant padding differs by up to 59 grey levels there, so we always pass
``pad_mode="symmetric"``. ``tests/test_protocol.py`` proves the result against MATLAB's own output
to 1e-6 (0-255 scale).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from resize_right import interp_methods, resize

from vdsr.errors import InvalidArgument

MAX_OUTPUT_PIXELS = 1 << 31  # guards against absurd scales before any memory is asked for


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


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """MATLAB's output size for ``imresize(img, scale)``: ``ceil(scale * size)``.

    A tiny tolerance keeps e.g. ``255 * (1/3)`` from becoming 86 through float error.
    """
    return (
        max(1, math.ceil(height * scale - 1e-9)),
        max(1, math.ceil(width * scale - 1e-9)),
    )


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
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise InvalidArgument(f"imresize needs a finite positive scale, got {scale}")
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise InvalidArgument(f"imresize expects a non-empty (H, W) or (H, W, C), got shape {arr.shape}")
    h, w = arr.shape[:2]
    if size is None:
        assert scale is not None
        size = output_size(h, w, scale)
    out_h, out_w = size
    if out_h < 1 or out_w < 1 or out_h * out_w > MAX_OUTPUT_PIXELS:
        raise InvalidArgument(f"imresize output size {size} is empty or too large")
    if scale is not None:
        factors = [float(scale), float(scale)]
    else:
        factors = [out_h / h, out_w / w]
    if arr.ndim == 3:
        factors.append(1.0)
        out_shape: tuple[int, ...] = (out_h, out_w, arr.shape[2])
    else:
        out_shape = (out_h, out_w)
    if (out_h, out_w) == (h, w) and all(f == 1.0 for f in factors):
        return arr.copy()
    result = resize(
        arr,
        scale_factors=factors,
        out_shape=out_shape,
        interp_method=interp_methods.cubic,
        antialiasing=True,
        pad_mode="symmetric",
    )
    return np.ascontiguousarray(result, dtype=np.float64)


def target_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The upscaled size ``vdsr`` produces: ``round(scale * size)``, at least 1."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize_matrix(size_in: int, size_out: int, scale: float) -> NDArray[np.float64]:
    """``(size_out, size_in)`` weights of MATLAB's bicubic along one axis, symmetric borders folded in.

    Resizing is linear, so resizing the identity gives the matrix: row ``o`` holds the weights of
    every input pixel for output pixel ``o``.
    """
    eye = np.eye(size_in, dtype=np.float64)
    out = resize(eye, scale_factors=[float(scale), 1.0], out_shape=(size_out, size_in),
                 interp_method=interp_methods.cubic, antialiasing=True, pad_mode="symmetric")
    return np.ascontiguousarray(out, dtype=np.float64)


def imresize_tensor(image: torch.Tensor, scale: float, size: tuple[int, int]) -> torch.Tensor:
    """:func:`imresize` for ``(N, C, H, W)`` tensors on any device, in the tensor's dtype.

    The same kernel, antialiasing and symmetric borders as the NumPy version, applied as two
    matrix products (rows, then columns); float64 input matches it to ~1e-15.
    """
    if image.ndim != 4 or 0 in image.shape:
        raise InvalidArgument(f"imresize_tensor expects a non-empty (N, C, H, W), got {tuple(image.shape)}")
    if not (math.isfinite(scale) and scale > 0):
        raise InvalidArgument(f"imresize needs a finite positive scale, got {scale}")
    h, w = image.shape[-2:]
    if (h, w) == tuple(size) and scale == 1.0:
        return image.clone()
    rows = torch.as_tensor(_resize_matrix(h, size[0], scale), dtype=image.dtype, device=image.device)
    cols = torch.as_tensor(_resize_matrix(w, size[1], scale), dtype=image.dtype, device=image.device)
    return torch.matmul(torch.matmul(rows, image), cols.T)


BAND = 128  # columns/rows per band in imresize_banded: ~2048 x 4 x 128 float64 = 8 MB at a time


def _axis_plan(in_sz: int, out_sz: int, scale: float) -> tuple[NDArray[np.int64], NDArray[np.float64], list[int]]:
    """resize-right's own field of view, weights and padding for one axis (its steps 1-3)."""
    from resize_right import resize_right as rr

    eps = np.finfo(np.float32).eps
    grid = rr.get_projected_grid(in_sz, out_sz, scale, np, False)
    method, support = rr.apply_antialiasing_if_needed(
        interp_methods.cubic, interp_methods.cubic.support_sz, scale, True)
    fov = rr.get_field_of_view(grid, support, np, eps, None)
    pad, grid, fov = rr.calc_pad_sz(in_sz, out_sz, fov, grid, scale, False, np, None)
    return fov, rr.get_weights(method, grid, fov), [int(p) for p in pad]


def imresize_banded(plane: NDArray[np.floating], scale: float, size: tuple[int, int]) -> NDArray[np.float64]:
    """:func:`imresize` of one ``(H, W)`` plane, computed in bands to bound memory.

    resize-right gathers every output pixel's 4 neighbours at once: upscaling a 1024² plane x2
    briefly holds 256 MB. This applies the same weights, padding and summation order band by band
    (a few MB), so the result is the same, bit for bit (tested). Upscaling only (``scale >= 1``).
    """
    arr = np.asarray(plane, dtype=np.float64)
    if arr.ndim != 2 or 0 in arr.shape or not scale >= 1.0:
        raise InvalidArgument(f"imresize_banded upscales a non-empty (H, W) plane, got {arr.shape} x{scale}")
    (h, w), (out_h, out_w) = arr.shape, size
    if out_h < 1 or out_w < 1 or out_h * out_w > MAX_OUTPUT_PIXELS:
        raise InvalidArgument(f"imresize output size {size} is empty or too large")
    if (out_h, out_w) == (h, w) and scale == 1.0:
        return arr.copy()
    fov0, wts0, pad0 = _axis_plan(h, out_h, float(scale))
    fov1, wts1, pad1 = _axis_plan(w, out_w, float(scale))
    if min(pad0 + pad1) < 0:  # resize-right crops instead of padding: leave it to imresize
        return imresize(arr, scale=scale, size=size)
    padded = np.pad(arr, [pad0, (0, 0)], mode="symmetric")
    rows = np.empty((out_h, w), dtype=np.float64)  # first axis 0 (resize-right's order), ...
    for c in range(0, w, BAND):
        rows[:, c:c + BAND] = (padded[:, c:c + BAND][fov0] * wts0[:, :, None]).sum(1)
    del padded
    padded = np.pad(rows.T, [pad1, (0, 0)], mode="symmetric")  # ... then axis 1, swapped first
    del rows
    out = np.empty((out_h, out_w), dtype=np.float64)
    for r in range(0, out_h, BAND):
        out[r:r + BAND] = (padded[:, r:r + BAND][fov1] * wts1[:, :, None]).sum(1).T
    return out


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
