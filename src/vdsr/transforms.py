"""The 8 flips/rotations of an image (the dihedral group of the square): training augmentation
and the self-ensemble use the same ones, for NumPy arrays and torch tensors alike."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

__all__ = ["dihedral", "dihedral_inverse"]

A = TypeVar("A")


def dihedral(x: A, k: int) -> A:
    """The ``k``-th of the 8 flips/rotations of the last two axes (``(..., H, W)``): ``k % 4``
    quarter turns, then a left-right flip when ``k >= 4``. A view where the array type allows."""
    if isinstance(x, np.ndarray):
        out: Any = np.rot90(x, k % 4, axes=(-2, -1))
        return out[..., ::-1] if k >= 4 else out
    import torch

    assert isinstance(x, torch.Tensor)
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if k >= 4 else y  # type: ignore[return-value]


def dihedral_inverse(y: A, k: int) -> A:
    """Undo :func:`dihedral`: ``dihedral_inverse(dihedral(x, k), k) == x`` exactly."""
    if isinstance(y, np.ndarray):
        out: Any = y[..., ::-1] if k >= 4 else y
        return np.rot90(out, -(k % 4), axes=(-2, -1))
    import torch

    assert isinstance(y, torch.Tensor)
    if k >= 4:
        y = torch.flip(y, dims=(-1,))  # type: ignore[assignment]
    return torch.rot90(y, -(k % 4), dims=(-2, -1))  # type: ignore[return-value]
