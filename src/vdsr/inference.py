"""Inference: RGB or grey image in, super-resolved image out, with exact tiling.

Colour images go through YCbCr: the network runs on Y, Cb and Cr are bicubic-upscaled, and the
result goes back to RGB. Large images are processed in tiles whose halo is the network's
receptive radius (``depth`` pixels): a 3x3 zero-padded convolution spreads the effect of the
tile's artificial border one pixel inward per layer, so after ``depth`` layers the core of each
tile is exactly what whole-image inference gives.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from numpy.typing import NDArray

from vdsr.color import rgb2ycbcr, ycbcr2rgb
from vdsr.errors import InvalidArgument, VDSRError
from vdsr.images import LoadedImage
from vdsr.model import VDSR
from vdsr.resize import imresize

DEFAULT_TILE = 512  # 552x552 with the halo: ~78 MB per 64-channel activation, 16% halo overhead
BACKENDS = ("auto", "torch", "onnxruntime", "int8")
MAX_SCALE = 16.0


def check_scale(scale: float, trained: list[int] | None = None) -> float:
    """Validate a user scale factor; warn outside the trained range rather than refuse."""
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise VDSRError(f"scale must be a number, got {scale!r}") from None
    if not math.isfinite(scale) or scale <= 1.0:
        raise VDSRError(f"scale must be a finite number greater than 1, got {scale}")
    if scale > MAX_SCALE:
        raise VDSRError(f"scale {scale} is too large (at most {MAX_SCALE:g})")
    lo, hi = (min(trained), max(trained)) if trained else (2, 4)
    if not lo <= scale <= hi:
        warnings.warn(
            f"scale {scale:g} is outside the model's trained range {lo}-{hi}; quality may suffer",
            stacklevel=2,
        )
    return scale


def check_tile(tile: int | None, model: VDSR) -> int | None:
    """``None`` or 0 means whole image; otherwise the tile must cover the receptive field."""
    if tile is None or tile == 0:
        return None
    rf = model.config.receptive_field
    if tile < rf:
        raise VDSRError(f"tile size {tile} is smaller than the receptive field ({rf}x{rf})")
    return int(tile)


def _tiles(size: int, tile: int) -> Iterator[tuple[int, int]]:
    for start in range(0, size, tile):
        yield start, min(start + tile, size)


def _pick_backend(backend: str, device: str | torch.device) -> str:
    if backend not in BACKENDS:
        raise InvalidArgument(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if backend != "auto":
        if backend in ("onnxruntime", "int8") and torch.device(device).type != "cpu":
            raise InvalidArgument(f"the {backend} backend runs on the CPU only")
        return backend
    from vdsr.export import ort_available

    return "onnxruntime" if torch.device(device).type == "cpu" and ort_available() else "torch"


def _torch_forward(model: VDSR, device: str | torch.device) -> Callable[[NDArray[np.float32]], NDArray[np.float32]]:
    dev = torch.device(device)
    # channels_last lets oneDNN pick its fastest convolutions on CPU (1.27x measured, eager).
    fmt = torch.channels_last

    @torch.inference_mode()
    def forward(x: NDArray[np.float32]) -> NDArray[np.float32]:
        t = torch.from_numpy(x).to(dev).contiguous(memory_format=fmt)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            y = model(t)
        return y.float().cpu().numpy()

    return forward


def run_network(
    model: VDSR,
    image: NDArray[np.floating],
    tile: int | None = DEFAULT_TILE,
    device: str | torch.device = "cpu",
    backend: str = "auto",
) -> NDArray[np.float32]:
    """Apply ``model`` to a ``(C, H, W)`` float array in [0, 1] (bicubic-upscaled), unclamped.

    With ``tile`` set, memory is bounded by one tile plus its halo, and the result equals the
    whole-image result (up to float summation order). ``backend``: ``"torch"``,
    ``"onnxruntime"`` (CPU), ``"int8"`` (ONNX Runtime on a statically quantised model, CPU;
    faster, not exact: see BENCHMARKS.md) or ``"auto"`` (ONNX Runtime on CPU when installed,
    else torch).
    """
    if image.ndim != 3:
        raise InvalidArgument(f"run_network expects (C, H, W), got {image.shape}")
    _, h, w = image.shape
    x = np.ascontiguousarray(image, dtype=np.float32)
    tile = check_tile(tile, model)
    picked = _pick_backend(backend, device)
    if picked in ("onnxruntime", "int8"):
        from vdsr.export import runner_for

        forward: Callable[[NDArray[np.float32]], NDArray[np.float32]] = runner_for(
            model, int8=picked == "int8")
    else:
        forward = _torch_forward(model, device)
    if tile is None or (h <= tile and w <= tile):
        return forward(x[None])[0]
    halo = model.config.depth
    out = np.empty(image.shape, dtype=np.float32)
    for y0, y1 in _tiles(h, tile):
        for x0, x1 in _tiles(w, tile):
            ty0, ty1 = max(0, y0 - halo), min(h, y1 + halo)
            tx0, tx1 = max(0, x0 - halo), min(w, x1 + halo)
            patch = forward(np.ascontiguousarray(x[None, :, ty0:ty1, tx0:tx1]))[0]
            out[:, y0:y1, x0:x1] = patch[:, y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0]
    return out


def target_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Output size: ``round(scale * size)``, at least 1."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def bicubic_upscale(pixels: NDArray[np.floating], scale: float) -> NDArray[np.float64]:
    """MATLAB bicubic upscaling of an ``(H, W)`` or ``(H, W, C)`` array to ``round(scale*size)``."""
    if pixels.ndim not in (2, 3) or 0 in pixels.shape:
        raise InvalidArgument(f"expected a non-empty (H, W) or (H, W, C) image, got {pixels.shape}")
    if not (math.isfinite(scale) and scale > 0):
        raise InvalidArgument(f"scale must be finite and positive, got {scale}")
    size = target_size(pixels.shape[0], pixels.shape[1], scale)
    return imresize(pixels, scale=scale, size=size)


def bicubic_clipped(pixels: NDArray[np.floating], scale: float) -> NDArray[np.float64]:
    """:func:`bicubic_upscale` clipped to [0, 1]: how alpha planes and bicubic previews are made."""
    return np.clip(bicubic_upscale(pixels, scale), 0.0, 1.0)


def upscale_array(
    model: VDSR,
    pixels: NDArray[np.floating],
    scale: float,
    tile: int | None = DEFAULT_TILE,
    device: str | torch.device = "cpu",
    backend: str = "auto",
) -> NDArray[np.float64]:
    """Super-resolve float [0, 1] ``pixels`` (``(H, W, 3)`` RGB or ``(H, W)`` grey) by ``scale``.

    Returns float64 in [0, 1] of size ``round(scale * (H, W))``, unrounded (callers quantise).
    A 1-channel model runs on Y (colour) or the grey values; a 3-channel model runs on RGB.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    channels = model.config.channels
    if pixels.ndim == 2:
        bicubic = bicubic_upscale(pixels, scale)
        if channels == 1:
            sr = run_network(model, bicubic[None], tile, device, backend)[0]
        else:
            rgb = np.repeat(bicubic[None], 3, axis=0)
            sr = run_network(model, rgb, tile, device, backend).mean(axis=0)
        return np.clip(sr.astype(np.float64), 0.0, 1.0)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise VDSRError(f"expected an (H, W) or (H, W, 3) image, got shape {pixels.shape}")
    if channels == 3:
        bicubic = bicubic_upscale(pixels, scale)
        sr = run_network(model, bicubic.transpose(2, 0, 1), tile, device, backend).transpose(1, 2, 0)
        return np.clip(sr.astype(np.float64), 0.0, 1.0)
    ycbcr = bicubic_upscale(rgb2ycbcr(pixels), scale)
    ycbcr[..., 0] = run_network(model, ycbcr[None, ..., 0], tile, device, backend)[0]
    return np.clip(ycbcr2rgb(ycbcr), 0.0, 1.0)


def upscale_loaded(
    model: VDSR,
    image: LoadedImage,
    scale: float,
    tile: int | None = DEFAULT_TILE,
    device: str | torch.device = "cpu",
    backend: str = "auto",
) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """Upscale a decoded image: ``(pixels, alpha)``, float [0, 1]; alpha is bicubic-upscaled.

    The one path behind ``vdsr upscale`` and ``vdsr serve``.
    """
    pixels = upscale_array(model, image.pixels, scale, tile, device, backend)
    alpha = None
    if image.alpha is not None:
        alpha = bicubic_clipped(image.alpha, scale)
    return pixels, alpha


def upscale(
    image: NDArray,
    scale: float,
    model: VDSR | None = None,
    tile: int | None = DEFAULT_TILE,
    device: str | torch.device = "cpu",
    backend: str = "auto",
) -> NDArray:
    """Super-resolve an image with VDSR (the shipped default model unless ``model`` is given).

    Args:
        image: ``(H, W, 3)`` RGB or ``(H, W)`` grey; uint8 (0-255), uint16 (0-65535) or float
            in [0, 1]. RGBA ``(H, W, 4)`` keeps its alpha, bicubic-upscaled.
        scale: any factor > 1; output size is ``round(scale * (H, W))``.
        model: a :class:`VDSR` in eval mode, e.g. from :func:`vdsr.load_model`.
        tile: tile side in output pixels (``None``: whole image); results are identical.
        backend: ``"auto"`` (ONNX Runtime on CPU), ``"torch"`` or ``"onnxruntime"``.

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
    pixels = arr.astype(np.float64) / peak
    alpha = None
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels, alpha = pixels[..., :3], pixels[..., 3]
    out = upscale_array(model, pixels, scale, tile, device, backend)
    if alpha is not None:
        out = np.dstack([out, bicubic_clipped(alpha, scale)])
    if peak == 1.0:
        return out.astype(arr.dtype)
    return np.clip(np.round(out * peak), 0, peak).astype(arr.dtype)
