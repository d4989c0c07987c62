"""vdsr.transforms: the 8 flips and rotations of the square (training augmentation, the
self-ensemble), each undone exactly."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import _input
from vdsr.transforms import dihedral, dihedral_inverse


@pytest.mark.parametrize("k", range(8))
def test_dihedral_inverse_is_exact(k: int) -> None:
    x = _input()
    assert torch.equal(dihedral_inverse(dihedral(x, k), k), x)
    assert len({tuple(dihedral(x, j).flatten()[:40].tolist()) for j in range(8)}) == 8
