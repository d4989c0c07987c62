"""The inference engine: :class:`Upscaler` runs VDSR on tensors, tiled, on any backend and precision.

Everything that runs the network goes through here: the NumPy/PIL wrappers of
:mod:`vdsr.inference`, ``vdsr upscale``, ``vdsr serve``, ``vdsr evaluate``, the benchmarks.

Tiling is exact. Every convolution is 3x3 with zero padding, so the tile's artificial border
reaches one pixel further inward per layer: after ``depth`` layers, a tile grown by a halo of
``depth`` pixels has a core that equals whole-image inference (up to float summation order).

Memory: only one tile and its halo go to the backend's device at a time; the full-size input and
output stay where the caller keeps them (``network`` returns on the input's device). On a CUDA
out-of-memory error the tile is halved and the image restarted, with a warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vdsr.backends import Backend, create_backend
from vdsr.constants import DEFAULT_TILE
from vdsr.errors import InvalidArgument, VDSRError
from vdsr.model import VDSR

__all__ = ["Progress", "Upscaler", "check_tile", "dihedral", "dihedral_inverse"]

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each tile (ensembles count 8 passes)."""


def check_tile(tile: int | None, receptive_field: int) -> int | None:
    """``None`` or 0 means whole image; otherwise the tile must cover the receptive field (so
    that its core, the tile less a halo of ``depth`` pixels each side, is at least one pixel)."""
    if tile is None or tile == 0:
        return None
    if tile < receptive_field:
        raise InvalidArgument(
            f"tile size {tile} is smaller than the receptive field ({receptive_field}x{receptive_field})")
    return int(tile)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th of the 8 flips/rotations of ``(..., H, W)``: ``k % 4`` quarter turns, then a
    left-right flip when ``k >= 4``."""
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


def dihedral_inverse(y: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`dihedral`: ``dihedral_inverse(dihedral(x, k), k) == x`` exactly."""
    if k >= 4:
        y = torch.flip(y, dims=(-1,))
    return torch.rot90(y, -(k % 4), dims=(-2, -1))


def _spans(size: int, tile: int) -> Iterator[tuple[int, int]]:
    for start in range(0, size, tile):
        yield start, min(start + tile, size)


@dataclass(frozen=True)
class RunInfo:
    """How an :class:`Upscaler` runs: recorded with every result (JSON, weights metadata)."""

    backend: str
    precision: str
    device: str
    tile: int | None
    ensemble: bool

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "device": self.device,
                "tile": self.tile, "ensemble": self.ensemble}


class Upscaler:
    """VDSR inference on tensors: ``network(x)`` and ``upscale(image, scale)``.

    Args:
        model: the network (e.g. from :func:`vdsr.weights.load_model`).
        device: where the network runs: ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        precision: ``"auto"``, ``"fp32"``, ``"tf32"``, ``"fp16"`` or ``"bf16"``
            (:mod:`vdsr.precision`); the precision used is ``self.precision``.
        backend: ``"auto"``, ``"torch"``, ``"compile"``, ``"onnxruntime"`` or ``"int8"``
            (:mod:`vdsr.backends`).
        tile: the largest network input, in pixels a side (``None``/0: whole image). Images that
            fit run whole; larger ones in tiles whose core is ``tile - 2 * depth`` plus a halo of
            ``depth`` on each side, so memory is bounded by one ``tile x tile`` input and results
            equal whole-image inference.
        ensemble: geometric self-ensemble: the mean of the 8 flips/rotations (8x compute).
        threads: CPU threads for ONNX Runtime (None: all cores).
        backend_instance: an already built backend to use instead of building one.
    """

    def __init__(self, model: VDSR, *, device: str | torch.device = "cpu", precision: str = "auto",
                 backend: str = "auto", tile: int | None = DEFAULT_TILE, ensemble: bool = False,
                 threads: int | None = None, backend_instance: Backend | None = None) -> None:
        self.model = model
        self.config = model.config
        self.runner: Backend = backend_instance or create_backend(model, backend, device, precision, threads)
        self.device = self.runner.device
        self.tile = check_tile(tile, model.config.receptive_field)
        self.ensemble = ensemble
        self.metadata: Any = None  # the weights' WeightsMetadata when built by from_weights

    @classmethod
    def from_weights(cls, weights: str | Path | None = None, **options: Any) -> Upscaler:
        """An upscaler for a ``.safetensors`` file (default: the shipped model); see the class."""
        from vdsr.weights import load_model

        model, meta = load_model(weights)
        upscaler = cls(model, **options)
        upscaler.metadata = meta
        return upscaler

    @property
    def precision(self) -> str:
        return self.runner.precision

    @property
    def info(self) -> RunInfo:
        return RunInfo(self.runner.name, self.runner.precision, str(self.device), self.tile,
                       self.ensemble)

    # -- the network on bicubic-upscaled input ---------------------------------------------------
    def network(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """Apply the network to ``(N, C, H, W)`` float in [0, 1] (already bicubic-upscaled).

        Returns float32 of the same shape on ``x``'s device, unclamped. With ``ensemble``, the mean
        of the 8 dihedral transforms, each inverted exactly.
        """
        if x.ndim != 4 or x.shape[1] != self.config.channels:
            raise InvalidArgument(
                f"expected (N, {self.config.channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] == 0 or x.shape[-2] == 0:
            raise InvalidArgument(f"image has no pixels (shape {tuple(x.shape)})")
        tile = self.tile
        while True:
            try:
                return self._network(x, tile, progress)
            except (torch.OutOfMemoryError, MemoryError) as exc:
                tile = self._smaller_tile(tile, x, exc)

    def _smaller_tile(self, tile: int | None, x: torch.Tensor, exc: BaseException) -> int:
        rf = self.config.receptive_field
        current = tile or max(x.shape[-2], x.shape[-1])
        smaller = current // 2
        if smaller < rf:
            raise VDSRError(f"out of memory on {self.device} even with {current}-pixel tiles") from exc
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        warnings.warn(f"out of memory on {self.device} with {current}-pixel tiles; "
                      f"continuing with {smaller}-pixel tiles", stacklevel=3)
        self.tile = smaller  # keep the size that fits for the next images
        return smaller

    def _network(self, x: torch.Tensor, tile: int | None, progress: Progress | None) -> torch.Tensor:
        passes = 8 if self.ensemble else 1
        h, w = x.shape[-2], x.shape[-1]
        tiles = 1
        if tile is not None and (h > tile or w > tile):
            core = tile - 2 * self.config.depth
            tiles = math.ceil(h / core) * math.ceil(w / core)
        counter = _Counter(passes * tiles, progress)
        x = x.float()
        if not self.ensemble:
            return self._tiled(x, tile, counter)
        total = torch.zeros_like(x)
        for k in range(8):
            total += dihedral_inverse(self._tiled(dihedral(x, k), tile, counter), k)
        return total / 8

    def _tiled(self, x: torch.Tensor, tile: int | None, counter: _Counter) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if tile is None or (h <= tile and w <= tile):
            out = self.runner(x).to(x.device)
            counter.step()
            return out
        halo = self.config.depth
        core = tile - 2 * halo  # so that no network input is larger than tile x tile
        out = torch.empty_like(x)
        for y0, y1 in _spans(h, core):
            for x0, x1 in _spans(w, core):
                ty0, ty1 = max(0, y0 - halo), min(h, y1 + halo)
                tx0, tx1 = max(0, x0 - halo), min(w, x1 + halo)
                patch = self.runner(x[..., ty0:ty1, tx0:tx1])
                out[..., y0:y1, x0:x1] = patch[..., y0 - ty0:y1 - ty0, x0 - tx0:x1 - tx0].to(x.device)
                counter.step()
        return out

    # -- whole images ------------------------------------------------------------------------------
    def upscale(self, image: torch.Tensor, scale: float, progress: Progress | None = None) -> torch.Tensor:
        """Super-resolve ``(N, 3, H, W)`` RGB or ``(N, 1, H, W)`` grey, float in [0, 1], by ``scale``.

        Returns float32 ``(N, C, round(scale*H), round(scale*W))`` in [0, 1] on ``image``'s device.
        A 1-channel model runs on Y (MATLAB BT.601) with Cb/Cr bicubic-upscaled; a 3-channel
        model runs on RGB. Bicubic is MATLAB's (:func:`vdsr.resize.imresize_tensor`).
        """
        from vdsr.color import rgb2ycbcr_tensor, ycbcr2rgb_tensor
        from vdsr.resize import imresize_tensor, target_size

        if image.ndim != 4 or image.shape[1] not in (1, 3):
            raise InvalidArgument(f"expected (N, 1 or 3, H, W), got {tuple(image.shape)}")
        size = target_size(image.shape[-2], image.shape[-1], scale)
        x = image.double()
        if image.shape[1] == 1 or self.config.channels == 3:
            bicubic = imresize_tensor(x, scale, size)
            if self.config.channels == image.shape[1]:
                sr = self.network(bicubic.float(), progress)
            else:  # grey image, RGB model: run on three equal planes, average back
                sr = self.network(bicubic.float().expand(-1, 3, -1, -1), progress).mean(1, keepdim=True)
            return sr.clamp(0, 1)
        ycbcr = imresize_tensor(rgb2ycbcr_tensor(x), scale, size)
        y = self.network(ycbcr[:, :1].float(), progress).double()
        rgb = ycbcr2rgb_tensor(torch.cat([y, ycbcr[:, 1:]], dim=1))
        return rgb.clamp(0, 1).float()


class _Counter:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)
