"""Training data: HR image folders -> (bicubic input, HR target) patch pairs.

For every HR image, every extra downscaling factor (augmentation, e.g. 1.0/0.7/0.5) and every
scale ``s``: ``hr = modcrop(hr, s)``, ``bicubic = imresize(imresize(hr, 1/s), s)`` with the
MATLAB-exact resize, on the Y channel (or RGB). Patches (41x41 by default) are cut from the pair
at the same place, then rotated by 0/90/180/270 degrees and flipped.

Two feeds, each a :class:`PatchSource` (the one interface the trainer uses):

* :class:`PatchSampler` (the default for ``vdsr train``) keeps each degraded image in memory
  and crops random patches every step: no multi-GB file, memory reported by
  :attr:`PatchSampler.nbytes`. On a GPU the same patches are cut there
  (:meth:`PatchSampler.batch_tensors`).
* :func:`write_hdf5` / :class:`H5Patches`: a patch cache written streaming into chunked HDF5
  (``input``/``label`` as in the notes), and read back; pytorch-vdsr's ``data``/``label`` files
  are read too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from vdsr.color import rgb2y
from vdsr.errors import DataError, ImageError, PixelScaleError
from vdsr.extras import need
from vdsr.io.fileio import atomic_path
from vdsr.io.images import list_images, load_image
from vdsr.pixels import require_unit
from vdsr.resize import degrade, imresize
from vdsr.transforms import dihedral


@dataclass
class DegradedImage:
    """One HR image and its bicubic-degraded version at one scale, ``(C, H, W)`` float32 [0, 1]."""

    hr: NDArray[np.float32]
    bicubic: NDArray[np.float32]
    scale: int


def to_channels(pixels: NDArray[np.float64], channels: int) -> NDArray[np.float64]:
    """``(H, W, 3)``/``(H, W)`` [0, 1] image -> ``(H, W)`` Y (``channels=1``) or ``(H, W, 3)`` RGB.

    Raw integer pixels raise :class:`~vdsr.errors.PixelScaleError` (``LoadedImage.floats()``
    gives the [0, 1] floats).
    """
    pixels = require_unit(pixels, "to_channels")
    if channels == 1:
        return pixels if pixels.ndim == 2 else rgb2y(pixels)
    if channels == 3:
        return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels
    raise DataError(f"channels must be 1 or 3, got {channels}")


def _check_scale(what: str, inputs: NDArray[np.float32], targets: NDArray[np.float32]) -> None:
    """Refuse training pairs that are not on the [0, 1] scale (e.g. 0-255 values: the network
    would learn on another scale than it is validated and used on)."""
    for name, a in (("inputs", inputs), ("targets", targets)):
        try:
            require_unit(a, name)
        except PixelScaleError as exc:
            raise DataError(f"{what}: not the [0, 1] scale training expects ({exc}; 0-255 data "
                            "must be divided by 255)") from None


def _chw(a: NDArray[np.float64]) -> NDArray[np.float32]:
    return np.ascontiguousarray((a[None] if a.ndim == 2 else a.transpose(2, 0, 1)), dtype=np.float32)


def collect_files(folders: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """All images in ``folders``; a folder without images is an error naming it."""
    files: list[Path] = []
    for folder in folders:
        try:
            files.extend(list_images(folder))
        except ImageError as exc:
            raise DataError(str(exc)) from None
    return files


def degraded_images(
    files: Sequence[Path],
    scales: Sequence[int],
    channels: int = 1,
    downscales: Sequence[float] = (1.0,),
    patch: int = 41,
    on_image: Callable[[Path], None] | None = None,
) -> Iterator[DegradedImage]:
    """Yield a :class:`DegradedImage` per (file, extra downscale, scale), skipping pieces < patch."""
    for path in files:
        try:
            img = load_image(path)
        except ImageError as exc:
            raise DataError(str(exc)) from None
        base = to_channels(img.floats()[0], channels)
        for factor in downscales:
            src = base if factor == 1.0 else np.clip(imresize(base, factor), 0.0, 1.0)
            for scale in scales:
                if min(src.shape[:2]) < max(patch, scale):
                    continue
                hr, bic = degrade(src, scale)
                if min(hr.shape[:2]) < patch:
                    continue
                yield DegradedImage(_chw(hr), _chw(bic), int(scale))
        if on_image is not None:
            on_image(path)


class PatchSource(Protocol):
    """Where training batches come from: what :class:`vdsr.train.Trainer` needs of a feed.

    ``batch`` returns ``(inputs, targets)``, each ``(n, C, P, P)`` float32 in [0, 1]; with
    ``part`` (a distributed rank's share) the random draws for the whole batch are still made,
    so every rank's generator advances alike, but only ``part`` is returned. ``state`` is the
    generator state, JSON-able, saved in checkpoints and set back on resume.

    ``batch_tensors`` is the same batch as tensors on ``device``. A source that can cut patches
    there itself (``cuts_on_device``) saves the host a loop over patches; for the others this
    default copies :meth:`batch`'s arrays, so a trainer can always call it.
    """

    cuts_on_device: bool

    @property
    def state(self) -> dict[str, Any]: ...

    @state.setter
    def state(self, value: dict[str, Any]) -> None: ...

    def batch(self, size: int, part: slice | None = None) -> tuple[NDArray[np.float32], NDArray[np.float32]]: ...

    def batch_tensors(self, size: int, part: slice | None,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch(size, part)
        return (torch.from_numpy(x).to(device, non_blocking=True),
                torch.from_numpy(y).to(device, non_blocking=True))


class _Seeded:
    """A NumPy generator whose whole state round-trips through checkpoints (``state``)."""

    rng: np.random.Generator

    @property
    def state(self) -> dict[str, Any]:
        return dict(self.rng.bit_generator.state)

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self.rng.bit_generator.state = value


class PatchSampler(_Seeded, PatchSource):
    """Random (bicubic, hr) patches from in-memory degraded images, reproducible from ``state``.

    Images are drawn in proportion to their area, so every pixel is equally likely to be in a
    patch; each patch gets a random one of the 8 rotations/flips.
    """

    cuts_on_device = True  # batch_tensors: one gather on the device

    def __init__(self, images: list[DegradedImage], patch: int = 41, seed: int = 0,
                 augment: bool = True) -> None:
        if not images:
            raise DataError("no training patches: every image is smaller than the patch size")
        for im in images:
            _check_scale("training image", im.hr, im.bicubic)
        self.images = images
        self.patch = patch
        self.augment = augment
        self._sizes = np.array([im.hr.shape[1:] for im in images], dtype=np.int64)  # (H, W) each
        counts = np.array([im.hr.size for im in images], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])  # into the flat device store
        areas = ((self._sizes[:, 0] - patch + 1) * (self._sizes[:, 1] - patch + 1)).astype(np.float64)
        self.weights = areas / areas.sum()
        self.rng = np.random.default_rng(seed)

    @property
    def nbytes(self) -> int:
        """Memory held by the degraded images."""
        return sum(im.hr.nbytes + im.bicubic.nbytes for im in self.images)

    def _draw(self, size: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """The random draws of one batch: image indices and ``(top, left, transform)`` in [0, 1)."""
        idx = self.rng.choice(len(self.images), size=size, p=self.weights)
        return idx, self.rng.random((size, 3))

    def batch(self, size: int, part: slice | None = None) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """``(inputs, targets)``, each ``(size, C, patch, patch)`` float32.

        With ``part``, the random draws for the whole batch are made (so the generator advances
        the same way on every distributed rank) but only that slice of patches is cut.
        """
        p = self.patch
        idx, u = self._draw(size)
        keep = range(size)[part] if part is not None else range(size)
        c = self.images[0].hr.shape[0]
        x = np.empty((len(keep), c, p, p), dtype=np.float32)
        y = np.empty((len(keep), c, p, p), dtype=np.float32)
        for n, j in enumerate(keep):
            im = self.images[idx[j]]
            top = int(u[j, 0] * (im.hr.shape[1] - p + 1))
            left = int(u[j, 1] * (im.hr.shape[2] - p + 1))
            k = int(u[j, 2] * 8) if self.augment else 0
            x[n] = dihedral(im.bicubic[:, top : top + p, left : left + p], k)
            y[n] = dihedral(im.hr[:, top : top + p, left : left + p], k)
        return x, y

    def batch_tensors(self, size: int, part: slice | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`batch` cut on ``device`` by one gather: the same draws and the same patches.

        The first call copies every degraded image to ``device`` once (:attr:`nbytes`); after
        that a batch costs two small random draws on the host and one indexing kernel, so a GPU
        is not held back by a Python loop over patches.
        """
        store = self._device_store(device)
        idx, u = self._draw(size)
        if part is not None:
            idx, u = idx[part], u[part]
        p, c = self.patch, self.images[0].hr.shape[0]
        heights, widths = self._sizes[idx, 0], self._sizes[idx, 1]
        top = (u[:, 0] * (heights - p + 1)).astype(np.int64)
        left = (u[:, 1] * (widths - p + 1)).astype(np.int64)
        k = (u[:, 2] * 8).astype(np.int64) if self.augment else np.zeros(len(idx), dtype=np.int64)
        # Flat index of every output pixel: offset + channel * H * W + row * W + column, where
        # (row, column) comes from the dihedral transform's own index grid (exact by construction).
        base = self._offsets[idx] + top * widths + left
        host = np.stack([base, widths, heights * widths, k], axis=1)
        b = torch.from_numpy(host).to(device, non_blocking=False)
        rows, cols = store["rows"][b[:, 3]], store["cols"][b[:, 3]]  # (n, p, p)
        chan = torch.arange(c, device=device).view(1, c, 1, 1) * b[:, 2].view(-1, 1, 1, 1)
        flat = (b[:, 0].view(-1, 1, 1, 1) + chan
                + rows.unsqueeze(1) * b[:, 1].view(-1, 1, 1, 1) + cols.unsqueeze(1))
        return store["bicubic"][flat], store["hr"][flat]

    def _device_store(self, device: torch.device) -> dict[str, torch.Tensor]:
        key = str(device)
        if getattr(self, "_store_key", None) != key:
            p = self.patch
            grid = np.arange(p * p).reshape(p, p)
            grids = np.stack([np.ascontiguousarray(dihedral(grid, k)) for k in range(8)])
            self._store = {
                "hr": torch.from_numpy(np.concatenate([im.hr.ravel() for im in self.images])).to(device),
                "bicubic": torch.from_numpy(np.concatenate([im.bicubic.ravel() for im in self.images])).to(device),
                "rows": torch.from_numpy(grids // p).to(device),
                "cols": torch.from_numpy(grids % p).to(device),
            }
            self._store_key = key
        return self._store


def grid_patches(
    image: DegradedImage, patch: int, stride: int
) -> Iterator[tuple[NDArray[np.float32], NDArray[np.float32]]]:
    """Patches on a regular grid (the notes' ``make_sub_data``, without the blocking imshow)."""
    _, h, w = image.hr.shape
    for top in range(0, h - patch + 1, stride):
        for left in range(0, w - patch + 1, stride):
            yield (image.bicubic[:, top : top + patch, left : left + patch],
                   image.hr[:, top : top + patch, left : left + patch])


def write_hdf5(
    path: str | os.PathLike[str],
    images: Iterator[DegradedImage],
    patch: int = 41,
    stride: int = 41,
    rotations: Sequence[int] = (0, 1, 2, 3),
    flips: bool = True,
    chunk: int = 256,
) -> int:
    """Stream grid patches into HDF5 datasets ``input``/``label`` (``N x C x patch x patch``).

    The datasets are chunked and resizable, and patches are appended ``chunk`` at a time, so
    memory stays at one buffer however large the file grows. The file appears atomically when
    complete. Returns the number of patch pairs written.
    """
    h5py = need("h5py", "train")

    transforms = [k for k in rotations] + ([k + 4 for k in rotations] if flips else [])
    count = 0
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        dsets: dict[str, Any] = {}
        buf_x: list[NDArray[np.float32]] = []
        buf_y: list[NDArray[np.float32]] = []

        def flush() -> None:
            nonlocal count
            if not buf_x:
                return
            if not dsets:
                c = buf_x[0].shape[0]
                for name in ("input", "label"):
                    dsets[name] = f.create_dataset(
                        name, shape=(0, c, patch, patch), maxshape=(None, c, patch, patch),
                        dtype="float32", chunks=(min(chunk, 64), c, patch, patch),
                    )
            n = len(buf_x)
            for name, buf in (("input", buf_x), ("label", buf_y)):
                dsets[name].resize(count + n, axis=0)
                dsets[name][count : count + n] = np.stack(buf)
            count += n
            buf_x.clear()
            buf_y.clear()

        for image in images:
            for x, y in grid_patches(image, patch, stride):
                for k in transforms:
                    buf_x.append(np.ascontiguousarray(dihedral(x, k)))
                    buf_y.append(np.ascontiguousarray(dihedral(y, k)))
                    if len(buf_x) >= chunk:
                        flush()
        flush()
        if count == 0:
            raise DataError("no patches: every image is smaller than the patch size")
        f.attrs["patch"] = patch
        f.attrs["stride"] = stride
    return count


class H5Patches(_Seeded, PatchSource):
    """Random batches from an HDF5 patch file: ours (``input``/``label``) or pytorch-vdsr's
    (``data``/``label``), ``N x C x H x W``; the notes' ``N x H x W x C`` layout is accepted too.
    """

    cuts_on_device = False  # patches come from the file: read on the host, then copied

    def __init__(self, path: str | os.PathLike[str], seed: int = 0) -> None:
        h5py = need("h5py", "train")

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError:
            raise DataError(f"{self.path}: not an HDF5 file") from None
        keys = set(self.file.keys())
        in_key = "input" if "input" in keys else "data" if "data" in keys else None
        if in_key is None or "label" not in keys:
            raise DataError(
                f"{self.path}: needs datasets 'input' (or 'data') and 'label', found {sorted(keys)}"
            )
        self.x, self.y = self.file[in_key], self.file["label"]
        for name, d in ((in_key, self.x), ("label", self.y)):
            if not hasattr(d, "shape") or len(d.shape) != 4:
                raise DataError(f"{self.path}: dataset '{name}' must be 4-D, got shape {getattr(d, 'shape', None)}")
            if d.dtype.kind != "f":
                raise DataError(f"{self.path}: dataset '{name}' must be float, got {d.dtype}")
        if self.x.shape != self.y.shape:
            raise DataError(f"{self.path}: input {self.x.shape} and label {self.y.shape} shapes differ")
        if self.x.shape[0] == 0:
            raise DataError(f"{self.path}: no patches")
        # NHWC (the notes' [?, 41, 41, c_dim]) when the last axis looks like channels.
        self.nhwc = self.x.shape[3] in (1, 3) and self.x.shape[1] not in (1, 3)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def channels(self) -> int:
        return int(self.x.shape[3] if self.nhwc else self.x.shape[1])

    def batch(self, size: int, part: slice | None = None) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        idx = self.rng.choice(len(self), size=min(size, len(self)), replace=False)
        if part is not None:
            idx = idx[part]
        idx = np.sort(idx)  # h5py reads need increasing indices
        x = np.asarray(self.x[idx], dtype=np.float32)
        y = np.asarray(self.y[idx], dtype=np.float32)
        if self.nhwc:
            x, y = x.transpose(0, 3, 1, 2), y.transpose(0, 3, 1, 2)
        _check_scale(f"{self.path}: patches", x, y)
        return np.ascontiguousarray(x), np.ascontiguousarray(y)

    def close(self) -> None:
        self.file.close()
