"""vdsr.resize: MATLAB-exact ``modcrop`` and bicubic ``imresize``: bit for bit against resize-right
(MATLAB's own outputs: test_protocol.py), the torch face equal to the NumPy face, symmetric
borders; ``degrade`` makes the (HR, bicubic) pair."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

from tests.conftest import REFERENCE, needs_shared
from vdsr.resize import (
    axis_weights,
    degrade,
    imresize,
    imresize_tensor,
    matlab_size,
    modcrop,
    resize_tensor,
)


@needs_shared
def test_constant_padding_would_fail() -> None:
    """Guard the reason for pad_mode='symmetric': constant padding is far off at borders."""
    from resize_right import interp_methods, resize

    mat = scipy.io.loadmat(str(REFERENCE / "set5_butterfly_x2.mat"))
    wrong = resize(mat["im_l_y"], scale_factors=2, interp_method=interp_methods.cubic)
    assert np.abs(wrong - mat["im_b_y"]).max() > 10


def test_modcrop_uses_integer_indices() -> None:
    """The notes' modcrop sliced with float indices from `/`; ours crops odd sizes exactly."""
    img = np.zeros((257, 130, 3))
    assert modcrop(img, 3).shape == (255, 129, 3)
    assert modcrop(img[..., 0], 4).shape == (256, 128)
    with pytest.raises(ValueError):
        modcrop(img, 2.5)  # type: ignore[arg-type]


def test_2_preprocess_returns_input_and_label() -> None:
    """`preprocess` used `label_` before assigning it; ours returns (hr, bicubic) of one size."""
    img = np.random.default_rng(0).random((50, 47))
    hr, bicubic = degrade(img, 3)
    assert hr.shape == bicubic.shape == (48, 45)
    assert np.array_equal(hr, modcrop(img, 3))
    assert not np.allclose(hr, bicubic)


def test_3_modcrop_integer_division() -> None:
    """`modcrop` used `/` (float indices in Python 3)."""
    assert modcrop(np.zeros((41, 43)), 3).shape == (39, 42)


def test_output_size_matches_matlab_ceil() -> None:
    assert matlab_size(255, 255, 1 / 3) == (85, 85)
    assert matlab_size(85, 85, 3) == (255, 255)
    assert matlab_size(7, 5, 0.5) == (4, 3)


def _resize_right(arr: np.ndarray, scale: float, size: tuple[int, int] | None) -> np.ndarray:
    from resize_right import interp_methods, resize

    size = size or matlab_size(arr.shape[0], arr.shape[1], scale)
    factors = [float(scale), float(scale)] + [1.0] * (arr.ndim - 2)
    return resize(arr, scale_factors=factors, out_shape=tuple(size) + arr.shape[2:],
                  interp_method=interp_methods.cubic, antialiasing=True, pad_mode="symmetric")


@pytest.mark.parametrize("shape", [(9, 12), (7, 5), (17, 9, 3), (64, 48), (101, 77, 3)])
@pytest.mark.parametrize("scale", [2, 3, 4, 2.5, 1.7, 3.3, 1 / 2, 1 / 3, 1 / 4, 0.7, 0.37])
def test_bicubic_core_equals_resize_right_bit_for_bit(shape: tuple[int, ...], scale: float) -> None:
    """Our own MATLAB weights (``axis_weights``) replaced the resize-right package: the same
    bits, for up- and downscaling, integer and fractional factors, grey and colour. (On images
    of 1-2 pixels NumPy sums the taps pairwise and the last bit may differ: not tested.)"""
    a = np.random.default_rng(len(shape) + int(scale * 10)).random(shape)
    size = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))) if scale > 1 else None
    assert np.array_equal(imresize(a, scale=scale, size=size), _resize_right(a, scale, size))


@pytest.mark.parametrize("scale", [2, 3, 2.5, 4])
def test_torch_face_and_regions_give_the_same_bits(scale: float) -> None:
    """The torch face, whole or one region read from a cut of the input (how the upscaler makes
    each tile's bicubic input), equals the NumPy face exactly in float64."""
    a = np.random.default_rng(3).random((37, 29))
    size = (round(37 * scale), round(29 * scale))
    whole = imresize(a, scale=scale, size=size)
    assert np.array_equal(imresize_tensor(torch.from_numpy(a), scale, size).numpy(), whole)
    rows, cols = axis_weights(37, size[0], float(scale)), axis_weights(29, size[1], float(scale))
    for r0, r1, c0, c1 in [(0, 9, 0, size[1]), (5, size[0], 11, 40), (size[0] - 3, size[0], 1, 2)]:
        pr, pc = rows.part(r0, r1), cols.part(c0, c1)
        (a0, a1), (b0, b1) = pr.span(), pc.span()
        part = resize_tensor(torch.from_numpy(a[a0:a1, b0:b1]), pr.shifted(a0), pc.shifted(b0))
        assert np.array_equal(part.numpy(), whole[r0:r1, c0:c1])


def test_imresize_identity_and_downscale_antialias() -> None:
    img = np.arange(64, dtype=np.float64).reshape(8, 8)
    assert np.array_equal(imresize(img, 1.0), img)
    # Constant images stay constant (kernel weights sum to 1, antialiasing included).
    flat = np.full((12, 15), 7.0)
    assert np.allclose(imresize(flat, 1 / 3), 7.0)
    assert np.allclose(imresize(flat, 2.5), 7.0)
