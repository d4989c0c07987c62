"""The inference engine: :class:`Upscaler` runs VDSR on tensors, tile by tile, on any backend and recipe.

Everything that upscales goes through here: ``vdsr upscale``, ``vdsr serve``, ``vdsr evaluate``,
the NumPy and file faces of :mod:`vdsr.api`, the benchmarks.

One image's path (:meth:`Upscaler.blocks`): the output is cut into tiles; for each, the engine
reads the few low-resolution pixels the tile needs, makes their MATLAB bicubic upscale
(:mod:`vdsr.resize`) of Y (and of Cb/Cr, alpha) for that tile alone, runs the network on Y,
converts back to RGB, rounds to the output's integer type and hands the finished block on. So
the working set is one tile's, whatever the image's size: no full-size float plane exists.

Tiling is exact. Every convolution is 3x3 with zero padding, so a tile's artificial border
reaches one pixel further inward per layer: after ``depth`` layers, a network input grown by a
halo of ``depth`` pixels has a core that equals whole-image inference (up to float summation
order), and bicubic values depend only on their own 4x4 neighbourhood, so they are the same bits
per tile as for the whole image. On an out-of-memory error the tile is halved and the image
restarted, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from vdsr.backends import Backend, resolve_device
from vdsr.color import rgb2ycbcr_tensor, ycbcr2rgb_tensor
from vdsr.constants import DEFAULT_TILE
from vdsr.errors import InvalidArgument, VDSRError
from vdsr.nn.model import VDSR
from vdsr.pixels import peak as pixel_peak
from vdsr.pixels import require_unit_tensor, to_uint_tensor
from vdsr.resize import AxisWeights, axis_weights, resize_tensor
from vdsr.sizes import require_positive_scale, upscaled_size
from vdsr.transforms import dihedral, dihedral_inverse

__all__ = ["Block", "Progress", "RunInfo", "Upscaler", "check_tile"]

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each tile; an exception it raises stops the work
(the server cancels a job whose client has gone that way)."""


def check_tile(tile: int | None, receptive_field: int) -> int | None:
    """``None`` or 0 means whole image; otherwise the tile must cover the receptive field (so
    that its core, the tile less a halo of ``depth`` pixels each side, is at least one pixel)."""
    if tile is None or tile == 0:
        return None
    if tile < receptive_field:
        raise InvalidArgument(
            f"tile size {tile} is smaller than the receptive field ({receptive_field}x{receptive_field})")
    return int(tile)


def _spans(size: int, step: int) -> Iterator[tuple[int, int]]:
    for start in range(0, size, step):
        yield start, min(start + step, size)


@dataclass(frozen=True)
class RunInfo:
    """How an :class:`Upscaler` runs: recorded with every result (JSON, weights metadata, web).

    ``recipe`` is the precision recipe (:mod:`vdsr.precision`), ``backend`` the runtime that runs
    it; ``check_db`` the recipe's measured mean Y-PSNR difference from fp32 for these weights
    (largest over scales; ``None`` when it was asked for by name or is fp32); ``guard`` the rule
    that sends some inputs of a recipe ``auto`` took to fp32 (:class:`vdsr.guard.Guarded`).
    """

    backend: str
    precision: str
    device: str
    tile: int | None
    ensemble: bool
    check_db: float | None = None
    guard: str | None = None

    @property
    def recipe(self) -> str:
        return self.precision

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "recipe": self.precision,
                "device": self.device, "tile": self.tile, "ensemble": self.ensemble,
                "check_db": self.check_db, "guard": self.guard}

    def describe(self) -> str:
        """A few words for an output line: ``int8 on openvino, cpu (checked: -0.001 dB)``."""
        text = f"{self.precision} on {self.backend}, {self.device}"
        if self.ensemble:
            text += ", self-ensemble"
        if self.check_db is not None:
            text += f"; checked for these weights: {self.check_db:+.3f} dB vs fp32"
        if self.guard:
            text += f"; {self.guard}"
        return text


@dataclass(frozen=True)
class Block:
    """A finished piece of an upscaled image: ``data`` ``(C, h, w)`` at rows ``y:y+h``, columns
    ``x:x+w`` of the output, in the output's dtype, on the input's device."""

    y: int
    x: int
    data: torch.Tensor


class Upscaler:
    """VDSR inference on tensors: ``upscale(image, scale)``, ``blocks(...)`` and ``network(x)``.

    Args:
        model: the network (e.g. from :func:`vdsr.weights.load_model`).
        device: where the network runs: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:1"``.
        precision: a recipe (:mod:`vdsr.precision`) or ``"auto"``: the fastest recipe checked
            for these weights on this machine (:func:`vdsr.recipes.choose`); ``self.info`` says
            which ran.
        backend: ``"auto"`` or a runtime: ``"torch"``, ``"compile"``, ``"onnxruntime"``,
            ``"openvino"`` (:mod:`vdsr.backends`).
        tile: the largest network input, in pixels a side (``None``/0: whole image). Images that
            fit run whole; larger ones in tiles whose core is ``tile - 2 * depth`` plus a halo of
            ``depth`` on each side, so memory is bounded by one ``tile x tile`` input and results
            equal whole-image inference.
        ensemble: geometric self-ensemble: the mean of the 8 flips/rotations (8x compute).
        threads: CPU threads for ONNX Runtime and OpenVINO (None: all cores).
        backend_instance: an already built backend to use instead of choosing one.
    """

    def __init__(self, model: VDSR, *, device: str | torch.device = "auto", precision: str = "auto",
                 backend: str = "auto", tile: int | None = DEFAULT_TILE, ensemble: bool = False,
                 threads: int | None = None, backend_instance: Backend | None = None) -> None:
        self.model = model
        self.config = model.config
        self.check_db: float | None = None
        if backend_instance is None:
            from vdsr.recipes import choose

            choice = choose(model, resolve_device(device), precision, backend, threads)
            backend_instance = choice.backend
            self.check_db = choice.verdict.worst_db if choice.verdict is not None else None
        self.runner: Backend = backend_instance
        self.device = self.runner.device
        self.tile = check_tile(tile, model.config.receptive_field)
        self.ensemble = ensemble

    @property
    def precision(self) -> str:
        return self.runner.precision

    @property
    def info(self) -> RunInfo:
        return RunInfo(self.runner.name, self.runner.precision, str(self.device), self.tile,
                       self.ensemble, self.check_db, getattr(self.runner, "guard", None))

    # -- the network on bicubic-upscaled input ---------------------------------------------------
    def network(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """Apply the network to ``(N, C, H, W)`` float in [0, 1] (already bicubic-upscaled).

        Returns float32 of the same shape on ``x``'s device, unclamped. With ``ensemble``, the mean
        of the 8 dihedral transforms, each inverted exactly.
        """
        if x.ndim != 4 or x.shape[1] != self.config.channels:
            raise InvalidArgument(f"expected (N, {self.config.channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] == 0 or x.shape[-2] == 0:
            raise InvalidArgument(f"image has no pixels (shape {tuple(x.shape)})")
        x = x.float()
        h, w = x.shape[-2:]
        while True:
            try:
                out = torch.empty_like(x)
                cores = self._cores(h, w)
                for i, (core, net) in enumerate(cores):
                    (y0, y1, x0, x1), (ny0, ny1, nx0, nx1) = core, net
                    patch = self._run(x[..., ny0:ny1, nx0:nx1])
                    out[..., y0:y1, x0:x1] = patch[..., y0 - ny0:y1 - ny0, x0 - nx0:x1 - nx0].to(x.device)
                    if progress is not None:
                        progress(i + 1, len(cores))
                return out
            except (torch.OutOfMemoryError, MemoryError) as exc:
                self._smaller_tile(max(h, w), exc)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The backend on one network input ``(N, C, h, w)`` float32, with the ensemble if asked."""
        if not self.ensemble:
            return self.runner(x)
        total = torch.zeros_like(x, device=self.device)
        for k in range(8):
            total += dihedral_inverse(self.runner(dihedral(x, k)).to(self.device), k)
        return total / 8

    def _cores(self, h: int, w: int) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
        """The output tiles: ``(core, network input)`` boxes ``(y0, y1, x0, x1)``. An image that
        fits in one tile runs whole; otherwise cores of ``tile - 2 * depth`` from the top left,
        each grown by the halo of ``depth`` pixels (clipped at the image's edges)."""
        tile = self.tile
        if tile is None or (h <= tile and w <= tile):
            return [((0, h, 0, w), (0, h, 0, w))]
        halo = self.config.depth
        core = tile - 2 * halo  # so that no network input is larger than tile x tile
        return [((y0, y1, x0, x1), (max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo)))
                for y0, y1 in _spans(h, core) for x0, x1 in _spans(w, core)]

    def _smaller_tile(self, size: int, exc: BaseException) -> None:
        rf = self.config.receptive_field
        current = self.tile or size
        smaller = current // 2
        if smaller < rf:
            raise VDSRError(f"out of memory on {self.device} even with {current}-pixel tiles") from exc
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        warnings.warn(f"out of memory on {self.device} with {current}-pixel tiles; "
                      f"continuing with {smaller}-pixel tiles", stacklevel=4)
        self.tile = smaller  # keep the size that fits for the next images

    # -- whole images, from the low-resolution pixels ----------------------------------------------
    def blocks(self, image: torch.Tensor, scale: float, dtype: torch.dtype | None = None,
               progress: Progress | None = None) -> Iterator[Block]:
        """Super-resolve one image by ``scale``, tile by tile.

        Args:
            image: ``(C, h, w)``: ``C`` = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA); uint8
                (0-255), uint16 (0-65535) or float in [0, 1]; on any device (each tile's pixels
                go to the network's device; finished blocks come back to the image's).
            scale: the factor; the output is ``round(scale * (h, w))`` (:func:`vdsr.sizes.upscaled_size`).
            dtype: of the blocks: uint8/uint16 (rounded and clipped), float32/float64 (clipped to
                [0, 1], unrounded); default: ``image``'s.
            progress: ``progress(done, total)`` after each tile.

        Yields :class:`Block` s that together cover the output once. A 1-channel model runs on Y
        (MATLAB BT.601) of a colour image, with Cb/Cr bicubic-upscaled, or on the grey values; a
        3-channel model runs on RGB. Alpha is bicubic-upscaled.
        """
        if image.ndim != 3 or image.shape[0] not in (1, 2, 3, 4) or 0 in image.shape:
            raise InvalidArgument(f"expected a non-empty (C, H, W) image with C in 1-4, got {tuple(image.shape)}")
        require_positive_scale(scale)
        dtype = dtype or image.dtype
        h, w = image.shape[-2:]
        out_h, out_w = upscaled_size(h, w, scale)
        rows, cols = axis_weights(h, out_h, float(scale)), axis_weights(w, out_w, float(scale))
        peak = pixel_peak(image.dtype)
        if image.is_floating_point():
            require_unit_tensor(image, "Upscaler.blocks")
        while True:
            try:
                cores = self._cores(out_h, out_w)
                for i, (core, net) in enumerate(cores):
                    yield self._block(image, peak, rows, cols, core, net, dtype)
                    if progress is not None:
                        progress(i + 1, len(cores))
                return
            except (torch.OutOfMemoryError, MemoryError) as exc:
                self._smaller_tile(max(out_h, out_w), exc)

    def _block(self, image: torch.Tensor, peak: float, rows: AxisWeights, cols: AxisWeights,
               core: tuple[int, int, int, int], net: tuple[int, int, int, int], dtype: torch.dtype) -> Block:
        (y0, y1, x0, x1), (ny0, ny1, nx0, nx1) = core, net
        net_rows, net_cols = rows.part(ny0, ny1), cols.part(nx0, nx1)
        (a0, a1), (b0, b1) = net_rows.span(), net_cols.span()
        # The low-resolution pixels this tile reads, as float64 on the network's device.
        lr = image[:, a0:a1, b0:b1].to(self.device, torch.float64) / peak
        net_rows, net_cols = net_rows.shifted(a0), net_cols.shifted(b0)
        core_rows = net_rows.part(y0 - ny0, y1 - ny0)
        core_cols = net_cols.part(x0 - nx0, x1 - nx0)
        crop = (slice(None), slice(y0 - ny0, y1 - ny0), slice(x0 - nx0, x1 - nx0))
        colour = lr.shape[0] >= 3
        pixels, alpha = lr[:3 if colour else 1], (lr[-1:] if lr.shape[0] in (2, 4) else None)
        if self.config.channels == 1 and colour:
            y = resize_tensor(rgb2ycbcr_tensor(pixels, "y"), net_rows, net_cols)
            sr_y = self._run(y.float()[None])[0][crop].double()
            cbcr = resize_tensor(rgb2ycbcr_tensor(pixels, "cbcr"), core_rows, core_cols)
            out = ycbcr2rgb_tensor(torch.cat([sr_y, cbcr], 0)).clamp(0.0, 1.0)
        else:
            bicubic = resize_tensor(pixels, net_rows, net_cols).float()
            if self.config.channels == pixels.shape[0]:
                sr = self._run(bicubic[None])[0]
            else:  # grey image, RGB model: three equal planes in, their mean out
                sr = self._run(bicubic.expand(3, -1, -1)[None])[0].mean(0, keepdim=True)
            out = sr[crop].double().clamp(0.0, 1.0)
        if alpha is not None:
            out = torch.cat([out, resize_tensor(alpha, core_rows, core_cols).clamp(0.0, 1.0)], 0)
        return Block(y0, x0, to_uint_tensor(out, dtype).to(image.device))

    def upscale(self, image: torch.Tensor, scale: float, progress: Progress | None = None) -> torch.Tensor:
        """Super-resolve ``(N, C, H, W)`` images (C in 1-4, float in [0, 1]) by ``scale``.

        Returns float32 ``(N, C, round(scale*H), round(scale*W))`` in [0, 1] on ``image``'s device
        (spandrel's contract); see :meth:`blocks`.
        """
        if image.ndim != 4:
            raise InvalidArgument(f"expected (N, C, H, W), got {tuple(image.shape)}")
        out_h, out_w = upscaled_size(image.shape[-2], image.shape[-1], scale)
        out = torch.empty((*image.shape[:2], out_h, out_w), dtype=torch.float32, device=image.device)
        for n in range(image.shape[0]):
            self.upscale_into(image[n], scale, out[n], progress)
        return out

    def upscale_into(self, image: torch.Tensor, scale: float, out: torch.Tensor,
                     progress: Progress | None = None) -> None:
        """:meth:`blocks` written into ``out`` ``(C, round(scale*h), round(scale*w))`` (any
        strides, e.g. a view of a NumPy array), in ``out``'s dtype."""
        for block in self.blocks(image, scale, out.dtype, progress):
            _, bh, bw = block.data.shape
            out[:, block.y:block.y + bh, block.x:block.x + bw] = block.data
