"""The NumPy and file API over the engine (:class:`vdsr.engine.Upscaler`): thin, no pipeline of
their own.

* :func:`upscale`: the Python API, a NumPy image in, the same dtype out;
* :func:`upscale_image`: a decoded :class:`~vdsr.io.images.LoadedImage` into encoded bytes or a
  stream (``vdsr serve``);
* :func:`upscale_file`: one file to another, atomically (``vdsr upscale``, folder jobs);
* :func:`run_network`, :func:`bicubic_upscale`: the network alone, bicubic alone.

Every one of them hands the image's own integer pixels to :meth:`Upscaler.blocks`, which works
tile by tile, so memory stays at the input, the output and one tile's working set.
"""

from __future__ import annotations

import io
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from numpy.typing import NDArray

from vdsr.constants import DEFAULT_MAX_PIXELS, DEFAULT_TILE
from vdsr.engine import Progress, RunInfo, Upscaler
from vdsr.errors import InvalidArgument, VDSRError
from vdsr.io.canvas import Canvas, PngCanvas, plan
from vdsr.io.encode import output_format, png_options, write_canvas, written
from vdsr.io.images import LoadedImage, load_image
from vdsr.nn.model import VDSR
from vdsr.pixels import peak, require_unit
from vdsr.quiet import catch_warnings
from vdsr.resize import imresize
from vdsr.sizes import check_output_pixels, check_scale, require_positive_scale, upscaled_size

__all__ = ["FileResult", "bicubic_clipped", "bicubic_upscale", "run_network", "upscale",
           "upscale_file", "upscale_image", "upscaler_for", "write_upscaled"]


def _version(model: VDSR) -> tuple[int, ...]:
    # In-place updates (optimiser steps, load_state_dict) bump each tensor's version counter.
    return tuple(p._version for p in model.parameters())


_UPSCALERS: weakref.WeakKeyDictionary[VDSR, dict[tuple[Any, ...], tuple[tuple[int, ...], Upscaler]]]
_UPSCALERS = weakref.WeakKeyDictionary()


def upscaler_for(model: VDSR, tile: int | None = DEFAULT_TILE, device: str | torch.device = "auto",
                 backend: str = "auto", precision: str = "auto", ensemble: bool = False) -> Upscaler:
    """An :class:`Upscaler` for ``model``, reused while the model's weights are unchanged.

    For callers that hand a model over and over (training validation, :func:`upscale`): building
    a backend costs a graph export, and ``auto`` a recipe check. Keyed weakly on the model.
    """
    key = (tile, str(device), backend, precision, ensemble)
    entries = _UPSCALERS.setdefault(model, {})
    version = _version(model)
    hit = entries.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    made = Upscaler(model, tile=tile, device=device, backend=backend, precision=precision, ensemble=ensemble)
    entries[key] = (version, made)
    return made


def run_network(model: VDSR, image: NDArray[np.floating], tile: int | None = DEFAULT_TILE,
                device: str | torch.device = "auto", backend: str = "auto", precision: str = "fp32",
                ensemble: bool = False) -> NDArray[np.float32]:
    """Apply ``model`` to a ``(C, H, W)`` float array in [0, 1] (bicubic-upscaled), unclamped.

    The NumPy face of :meth:`Upscaler.network` (exact fp32 unless asked otherwise); tiled results
    equal whole-image results.
    """
    if image.ndim != 3:
        raise InvalidArgument(f"run_network expects (C, H, W), got {image.shape}")
    up = upscaler_for(model, tile, device, backend, precision, ensemble)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return up.network(x)[0].cpu().numpy()


def bicubic_upscale(pixels: NDArray[np.floating], scale: float) -> NDArray[np.float64]:
    """MATLAB bicubic resizing of an ``(H, W)`` or ``(H, W, C)`` array to ``round(scale*size)``."""
    if pixels.ndim not in (2, 3) or 0 in pixels.shape:
        raise InvalidArgument(f"expected a non-empty (H, W) or (H, W, C) image, got {pixels.shape}")
    require_positive_scale(scale)
    return imresize(pixels, scale=scale, size=upscaled_size(pixels.shape[0], pixels.shape[1], scale))


def bicubic_clipped(pixels: NDArray[np.floating], scale: float) -> NDArray[np.float64]:
    """:func:`bicubic_upscale` of floats on [0, 1], clipped to [0, 1]: how bicubic previews are made."""
    out = bicubic_upscale(require_unit(pixels, "bicubic_clipped"), scale)
    return np.clip(out, 0.0, 1.0, out=out)


def as_tensor(array: NDArray[Any]) -> torch.Tensor:
    """``torch.from_numpy`` without a copy, also for read-only arrays (decoded images are): the
    engine only reads its input."""
    with catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _check_image(arr: NDArray[Any]) -> None:
    peak(arr.dtype)  # uint8, uint16 or float; any other dtype is refused
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0 \
            or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise VDSRError(f"expected an (H, W) or (H, W, C) image with C in 1-4, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InvalidArgument("float image contains NaN or inf values")
        hi, lo = float(arr.max()), float(arr.min())
        if hi > 1.0 + 1e-6 or lo < -1e-6:
            raise InvalidArgument(
                f"float images must be in [0, 1]; this one spans [{lo:g}, {hi:g}] "
                "(divide 8-bit values by 255, or pass the uint8 array)")


def upscale(
    image: NDArray[Any],
    scale: float,
    model: VDSR | None = None,
    tile: int | None = DEFAULT_TILE,
    device: str | torch.device = "auto",
    backend: str = "auto",
    precision: str = "auto",
    ensemble: bool = False,
    max_output_pixels: int | None = None,
    progress: Progress | None = None,
) -> NDArray[Any]:
    """Super-resolve an image with VDSR (the shipped default model unless ``model`` is given).

    Args:
        image: ``(H, W, 3)`` RGB or ``(H, W)`` grey; uint8 (0-255), uint16 (0-65535) or float
            in [0, 1] (a float image on another scale is refused). RGBA ``(H, W, 4)`` (and grey
            with alpha, ``(H, W, 2)``) keeps its alpha, bicubic-upscaled.
        scale: any factor in ``(1, 16]``; output size is ``round(scale * (H, W))``.
        model: a :class:`VDSR` in eval mode, e.g. from :func:`vdsr.load_model`.
        tile: tile side in pixels (``None``: whole image); results are identical.
        device, backend, precision: see :class:`vdsr.engine.Upscaler` (``precision="auto"``: the
            fastest recipe checked for the weights; ``"fp32"``: exact).
        ensemble: average the 8 flips/rotations (8x compute, a little sharper).
        max_output_pixels: refuse (:class:`TooLarge`) outputs larger than this.
        progress: ``progress(done_tiles, total_tiles)``.

    Returns:
        The upscaled image with ``image``'s dtype: integers rounded, floats in [0, 1].
    """
    from vdsr.weights import load_model

    arr = np.asarray(image)
    _check_image(arr)
    if model is None:
        model, meta = load_model()
        check_scale(scale, meta.scales)
    else:
        check_scale(scale)
    out_h, out_w = check_output_pixels("image", arr.shape[0], arr.shape[1], scale, max_output_pixels)
    up = upscaler_for(model, tile, device, backend, precision, ensemble)
    planes = np.ascontiguousarray(arr if arr.ndim == 3 else arr[..., None])
    out = np.empty((out_h, out_w, planes.shape[2]), dtype=np.float64 if arr.dtype.kind == "f" else arr.dtype)
    up.upscale_into(as_tensor(planes).permute(2, 0, 1), scale,
                    torch.from_numpy(out).permute(2, 0, 1), progress)
    result = out if arr.ndim == 3 else out[..., 0]
    return result.astype(arr.dtype, copy=False)


def upscale_image(up: Upscaler, image: LoadedImage, scale: float, progress: Progress | None = None,
                  max_output_pixels: int | None = None, fmt: str = "PNG", stream: BinaryIO | None = None,
                  quality: int = 95, name: str | None = None) -> bytes | None:
    """Upscale a decoded image and encode it as ``fmt`` (``"PNG"``, ``"JPEG"``, ``"WEBP"``,
    ``"TIFF"``, ``"BMP"``), with its metadata, into ``stream``; without one, return the bytes.

    Raises :class:`TooLarge` before any work when the output would be over ``max_output_pixels``.
    The output keeps the input's bit depth where the format can hold it (a warning naming ``name``
    says what it cannot hold). A PNG is encoded band by band as the engine finishes them
    (:class:`vdsr.io.canvas.PngCanvas`): memory stays at one band.
    """
    out_h, out_w = check_output_pixels(str(image.path), image.height, image.width, scale, max_output_pixels)
    planes = image.planes()
    channels, bit_depth = plan(planes.shape[0], image.bit_depth, fmt, name or str(image.path))
    target: BinaryIO = stream if stream is not None else io.BytesIO()
    canvas: Canvas | PngCanvas
    if fmt == "PNG":
        canvas = PngCanvas(target, out_h, out_w, channels, bit_depth, png_options(image.metadata, (out_w, out_h)))
    else:
        canvas = Canvas(out_h, out_w, channels, bit_depth)
    # 16-bit sources are computed at 16 bits even for an 8-bit output, which rounds each block
    # to 8 bits (as the files of earlier releases were).
    dtype = torch.uint16 if image.bit_depth == 16 else torch.uint8
    for block in up.blocks(as_tensor(planes), scale, dtype, progress):
        canvas.write(block.y, block.x, block.data[:channels].permute(1, 2, 0).cpu().numpy())
    if isinstance(canvas, PngCanvas):
        canvas.finish()
    else:
        write_canvas(target, fmt, canvas, image.metadata, quality)
    return target.getvalue() if stream is None else None  # type: ignore[attr-defined]


@dataclass(frozen=True)
class FileResult:
    """What :func:`upscale_file` did: sizes ``(width, height)``, seconds, and how it ran."""

    source: Path
    target: Path
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    seconds: float
    run: RunInfo


def upscale_file(up: Upscaler, source: str | Path, target: str | Path, scale: float, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_output_pixels: int | None = None,
                 quality: int = 95, progress: Progress | None = None) -> FileResult:
    """Decode ``source``, upscale it by ``scale`` and write ``target`` atomically (format from
    its extension), keeping EXIF, ICC profile and DPI. Nothing is written on failure.

    Overwrite policy is the caller's: this writes ``target`` whether or not it exists.
    """
    start = time.perf_counter()
    image = load_image(source, max_pixels=max_pixels)
    return write_upscaled(up, image, target, scale, max_output_pixels=max_output_pixels,
                          quality=quality, progress=progress, start=start)


def write_upscaled(up: Upscaler, image: LoadedImage, target: str | Path, scale: float, *,
                   max_output_pixels: int | None = None, quality: int = 95,
                   progress: Progress | None = None, start: float | None = None) -> FileResult:
    """:func:`upscale_file` for an image already decoded: written to a temporary file beside
    ``target`` and renamed into place when complete (nothing is left on failure)."""
    start = time.perf_counter() if start is None else start
    target = Path(target)
    fmt = output_format(target)
    out_h, out_w = upscaled_size(image.height, image.width, scale)
    with written(target) as tmp, tmp.open("wb") as stream:
        upscale_image(up, image, scale, progress, max_output_pixels, fmt=fmt, stream=stream,
                      quality=quality, name=str(target))
    return FileResult(image.path, target, (image.width, image.height), (out_w, out_h),
                      time.perf_counter() - start, up.info)
