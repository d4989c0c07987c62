"""NumPy and image-file wrappers over the tensor engine (:class:`vdsr.engine.Upscaler`).

Colour images go through YCbCr: the network runs on Y, Cb and Cr are bicubic-upscaled, and the
result goes back to RGB. The full-size arrays are kept few and small: the network's input and
output are float32, Cb/Cr are upscaled one plane at a time, and the conversion back to RGB and
the rounding to 8 or 16 bits run in bands of rows straight into the output array.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from vdsr.backends import shared_backend
from vdsr.color import rgb2y, rgb2ycbcr, ycbcr2rgb
from vdsr.constants import DEFAULT_SCALES, DEFAULT_TILE, MAX_SCALE
from vdsr.engine import Progress, Upscaler
from vdsr.engine import check_tile as _check_tile
from vdsr.errors import BadScale, InvalidArgument, VDSRError
from vdsr.images import LoadedImage, check_output_size
from vdsr.model import VDSR
from vdsr.resize import imresize, imresize_banded, target_size

__all__ = ["DEFAULT_TILE", "MAX_SCALE", "bicubic_clipped", "bicubic_upscale",
           "check_scale", "check_tile", "run_network", "target_size", "upscale", "upscale_array",
           "upscale_image", "upscale_pixels", "upscaler_for"]

BAND_ROWS = 256  # rows converted back to RGB at a time: 2048-wide float64 RGB bands of 12 MB


def check_scale(scale: float, trained: list[int] | None = None) -> float:
    """Validate a user scale factor in ``(1, MAX_SCALE]``; warn outside the trained range."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise BadScale(scale, f"scale must be a number, got {scale!r}") from None
    if not math.isfinite(value) or value <= 1.0:
        raise BadScale(value, f"scale must be a finite number greater than 1, got {value:g}")
    if value > MAX_SCALE:
        raise BadScale(value, f"scale {value:g} is too large (at most {MAX_SCALE:g})")
    lo, hi = (min(trained), max(trained)) if trained else (min(DEFAULT_SCALES), max(DEFAULT_SCALES))
    if not lo <= value <= hi:
        warnings.warn(
            f"scale {value:g} is outside the model's trained range {lo}-{hi}; quality may suffer",
            stacklevel=2,
        )
    return value


def check_tile(tile: int | None, model: VDSR) -> int | None:
    """``None`` or 0 means whole image; otherwise the tile must cover the receptive field."""
    return _check_tile(tile, model.config.receptive_field)


def upscaler_for(model: VDSR, tile: int | None = DEFAULT_TILE, device: str | torch.device = "cpu",
                 backend: str = "auto", precision: str = "auto", ensemble: bool = False) -> Upscaler:
    """An :class:`Upscaler` for ``model`` whose backend is reused while the weights are unchanged."""
    runner = shared_backend(model, backend, device, precision)
    return Upscaler(model, tile=tile, ensemble=ensemble, backend_instance=runner)


def run_network(
    model: VDSR,
    image: NDArray[np.floating],
    tile: int | None = DEFAULT_TILE,
    device: str | torch.device = "cpu",
    backend: str = "auto",
    precision: str = "auto",
    ensemble: bool = False,
) -> NDArray[np.float32]:
    """Apply ``model`` to a ``(C, H, W)`` float array in [0, 1] (bicubic-upscaled), unclamped.

    The NumPy face of :meth:`Upscaler.network`: tiled results equal whole-image results.
    """
    if image.ndim != 3:
        raise InvalidArgument(f"run_network expects (C, H, W), got {image.shape}")
    up = upscaler_for(model, tile, device, backend, precision, ensemble)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return up.network(x)[0].cpu().numpy()


def bicubic_upscale(pixels: NDArray[np.floating], scale: float) -> NDArray[np.float64]:
    """MATLAB bicubic upscaling of an ``(H, W)`` or ``(H, W, C)`` array to ``round(scale*size)``."""
    if pixels.ndim not in (2, 3) or 0 in pixels.shape:
        raise InvalidArgument(f"expected a non-empty (H, W) or (H, W, C) image, got {pixels.shape}")
    if not (math.isfinite(scale) and scale > 0):
        raise InvalidArgument(f"scale must be finite and positive, got {scale}")
    size = target_size(pixels.shape[0], pixels.shape[1], scale)
    if scale < 1.0:
        return imresize(pixels, scale=scale, size=size)
    if pixels.ndim == 2:  # one plane at a time, in bands: a few MB instead of 8x the output
        return imresize_banded(pixels, scale, size)
    return np.stack([imresize_banded(pixels[..., c], scale, size) for c in range(pixels.shape[2])],
                    axis=-1)


def bicubic_clipped(pixels: NDArray[np.floating], scale: float) -> NDArray[np.float64]:
    """:func:`bicubic_upscale` clipped to [0, 1]: how alpha planes and bicubic previews are made."""
    return np.clip(bicubic_upscale(pixels, scale), 0.0, 1.0)


def _quantise(rgb: NDArray[np.float64], dtype: np.dtype) -> NDArray[Any]:
    """Float [0, 1] to ``dtype``: integers rounded and clipped, floats returned as they are."""
    if dtype == np.float64:
        return rgb
    peak = float(np.iinfo(dtype).max)
    return np.clip(np.round(rgb * peak), 0, peak).astype(dtype)


def _bands(rows: int) -> Iterator[slice]:
    for start in range(0, rows, BAND_ROWS):
        yield slice(start, min(start + BAND_ROWS, rows))


def _network_plane(up: Upscaler, plane: NDArray[np.floating], progress: Progress | None) -> NDArray[np.float32]:
    x = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None, None]
    return up.network(x, progress)[0, 0].cpu().numpy()


def upscale_pixels(up: Upscaler, pixels: NDArray[np.floating], scale: float,
                   dtype: type | np.dtype = np.float64, progress: Progress | None = None) -> NDArray[Any]:
    """Super-resolve ``(H, W, 3)`` RGB or ``(H, W)`` grey float pixels in [0, 1] by ``scale``.

    Returns ``round(scale * (H, W))`` pixels as ``dtype``: float64 in [0, 1] (unrounded), or
    uint8/uint16 rounded. A 1-channel model runs on Y (colour) or the grey values; a 3-channel
    model runs on RGB.
    """
    out_dtype = np.dtype(dtype)
    pixels = np.asarray(pixels)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise VDSRError(f"expected an (H, W) or (H, W, 3) image, got shape {pixels.shape}")
    channels = up.config.channels
    if pixels.ndim == 2:
        bicubic = bicubic_upscale(pixels, scale)
        if channels == 1:
            sr = _network_plane(up, bicubic, progress)
        else:
            rgb = torch.from_numpy(np.repeat(bicubic[None], 3, axis=0).astype(np.float32))[None]
            sr = up.network(rgb, progress)[0].mean(0).cpu().numpy()
        return _quantise(np.clip(sr.astype(np.float64), 0.0, 1.0), out_dtype)
    if channels == 3:
        bicubic = bicubic_upscale(pixels, scale)
        x = torch.from_numpy(np.ascontiguousarray(bicubic.transpose(2, 0, 1), dtype=np.float32))[None]
        sr = up.network(x, progress)[0].cpu().numpy().transpose(1, 2, 0)
        return _quantise(np.clip(sr.astype(np.float64), 0.0, 1.0), out_dtype)
    # Y first, chroma after the network: the network's working set never meets the chroma planes.
    y = bicubic_upscale(rgb2y(pixels), scale).astype(np.float32)  # float64 dropped at once
    sr_y = _network_plane(up, y, progress)
    del y
    ycbcr = rgb2ycbcr(pixels)  # low resolution: small
    cb = bicubic_upscale(ycbcr[..., 1], scale)
    cr = bicubic_upscale(ycbcr[..., 2], scale)
    del ycbcr
    out = np.empty((*sr_y.shape, 3), dtype=out_dtype)
    for band in _bands(sr_y.shape[0]):
        merged = np.stack([sr_y[band].astype(np.float64), cb[band], cr[band]], axis=-1)
        out[band] = _quantise(np.clip(ycbcr2rgb(merged), 0.0, 1.0), out_dtype)
    return out


def upscale_array(
    model: VDSR,
    pixels: NDArray[np.floating],
    scale: float,
    tile: int | None = DEFAULT_TILE,
    device: str | torch.device = "cpu",
    backend: str = "auto",
    precision: str = "auto",
    ensemble: bool = False,
) -> NDArray[np.float64]:
    """:func:`upscale_pixels` with a model: float [0, 1] in, float64 [0, 1] out, unrounded."""
    up = upscaler_for(model, tile, device, backend, precision, ensemble)
    return upscale_pixels(up, np.asarray(pixels, dtype=np.float64), scale)


def upscale_image(up: Upscaler, image: LoadedImage, scale: float, progress: Progress | None = None,
                  max_output_pixels: int | None = None) -> tuple[NDArray[Any], NDArray[np.uint8] | None]:
    """Upscale a decoded image for writing: ``(pixels, alpha)`` as integers of its bit depth.

    ``pixels`` is uint8 (8-bit sources) or uint16 (16-bit); alpha, bicubic-upscaled, is uint8.
    The one path behind ``vdsr upscale`` and ``vdsr serve``. Raises :class:`TooLarge` before any
    work when the output would be over ``max_output_pixels``.
    """
    if max_output_pixels is not None:
        check_output_size(str(image.path), image.height, image.width, scale, max_output_pixels)
    dtype = np.uint16 if image.bit_depth == 16 else np.uint8
    pixels = upscale_pixels(up, image.pixels, scale, dtype, progress)
    alpha = None
    if image.alpha is not None:
        alpha = _quantise(bicubic_clipped(image.alpha, scale), np.dtype(np.uint8))
    return pixels, alpha


def upscale(
    image: NDArray[Any],
    scale: float,
    model: VDSR | None = None,
    tile: int | None = DEFAULT_TILE,
    device: str | torch.device = "cpu",
    backend: str = "auto",
    precision: str = "auto",
    ensemble: bool = False,
    max_output_pixels: int | None = None,
    progress: Progress | None = None,
) -> NDArray[Any]:
    """Super-resolve an image with VDSR (the shipped default model unless ``model`` is given).

    Args:
        image: ``(H, W, 3)`` RGB or ``(H, W)`` grey; uint8 (0-255), uint16 (0-65535) or float
            in [0, 1] (a float image on another scale is refused). RGBA ``(H, W, 4)`` keeps its
            alpha, bicubic-upscaled.
        scale: any factor in ``(1, 16]``; output size is ``round(scale * (H, W))``.
        model: a :class:`VDSR` in eval mode, e.g. from :func:`vdsr.load_model`.
        tile: tile side in pixels (``None``: whole image); results are identical.
        device, backend, precision: see :class:`vdsr.engine.Upscaler`.
        ensemble: average the 8 flips/rotations (8x compute, a little sharper).
        max_output_pixels: refuse (:class:`TooLarge`) outputs larger than this.
        progress: ``progress(done_tiles, total_tiles)``.

    Returns:
        The upscaled image with ``image``'s dtype: integers rounded, floats in [0, 1].
    """
    from vdsr.weights import load_model

    if model is None:
        model, meta = load_model(device=device)
        check_scale(scale, meta.scales)
    else:
        check_scale(scale)
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        peak = 255.0
    elif arr.dtype == np.uint16:
        peak = 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        peak = 1.0
    else:
        raise VDSRError(f"unsupported image dtype {arr.dtype}")
    if arr.ndim < 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise VDSRError(f"image has no pixels (shape {arr.shape})")
    if peak == 1.0:
        if not np.isfinite(arr).all():
            raise InvalidArgument("float image contains NaN or inf values")
        hi, lo = float(arr.max()), float(arr.min())
        if hi > 1.0 + 1e-6 or lo < -1e-6:
            raise InvalidArgument(
                f"float images must be in [0, 1]; this one spans [{lo:g}, {hi:g}] "
                "(divide 8-bit values by 255, or pass the uint8 array)")
    if max_output_pixels is not None:
        check_output_size("image", arr.shape[0], arr.shape[1], scale, max_output_pixels)
    pixels = arr.astype(np.float64) / peak
    alpha = None
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels, alpha = pixels[..., :3], pixels[..., 3]
    up = upscaler_for(model, tile, device, backend, precision, ensemble)
    out = upscale_pixels(up, pixels, scale, progress=progress)
    if alpha is not None:
        out = np.dstack([out, bicubic_clipped(alpha, scale)])
    if peak == 1.0:
        return out.astype(arr.dtype)
    return np.clip(np.round(out * peak), 0, peak).astype(arr.dtype)
