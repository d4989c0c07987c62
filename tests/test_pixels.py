"""The pixel contract (vdsr.pixels, issue 29): integers are a file's raw values, floats are on
[0, 1], and every function that computes on [0, 1] refuses raw integers with a typed error.

Before the contract, ``rgb2y``, ``make_pair`` and ``to_channels`` took uint8 arrays and returned
values 255 times too large (the training bug of f30c5f2), and an HDF5 file of 0-255 floats trained
without a word. Each refusal below returned a wrong number on that code.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from vdsr.api import bicubic_clipped
from vdsr.color import rgb2y, rgb2ycbcr, rgb2ycbcr_tensor, ycbcr2rgb, ycbcr2rgb_tensor
from vdsr.engine import Upscaler
from vdsr.errors import DataError, InvalidArgument, PixelScaleError
from vdsr.nn.model import VDSR, VDSRConfig
from vdsr.pixels import peak, require_unit, to_uint, to_uint_tensor, to_unit
from vdsr.quality.protocol import make_pair
from vdsr.train.data import DegradedImage, H5Patches, PatchSampler, to_channels


def _rgb(dtype: type = np.uint8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, int(np.iinfo(dtype).max) + 1, size=(12, 10, 3)).astype(dtype)


# -- the rule itself ------------------------------------------------------------------------------

def test_peak_is_255_65535_or_one_and_nothing_else_is_a_pixel_type() -> None:
    assert peak(np.uint8) == 255.0 and peak(np.uint16) == 65535.0
    assert peak(np.float32) == 1.0 and peak(torch.uint8) == 255.0 and peak(torch.float16) == 1.0
    for other in (np.int32, np.int16, np.bool_, torch.int32):
        with pytest.raises(PixelScaleError, match="not a pixel type"):
            peak(other)
    assert issubclass(PixelScaleError, InvalidArgument)  # the CLI and server map it like bad input


def test_to_unit_and_to_uint_round_trip_both_depths_exactly() -> None:
    for dtype, bits in ((np.uint8, 8), (np.uint16, 16)):
        raw = _rgb(dtype)
        unit = to_unit(raw)
        assert unit.dtype == np.float64 and 0.0 <= unit.min() and unit.max() <= 1.0
        assert np.array_equal(to_uint(unit, bits), raw)
    # 16 -> 8 bits rescales (round(v / 65535 * 255)), it does not truncate or wrap
    assert to_uint(np.array([0, 257, 32896, 65535], np.uint16), 8).tolist() == [0, 1, 128, 255]
    # floats are clipped, and rounded half to even as NumPy does
    assert to_uint(np.array([-0.2, 0.5 / 255, 1.5 / 255, 1.3]), 8).tolist() == [0, 0, 2, 255]
    t = to_uint_tensor(torch.tensor([-0.2, 1.5 / 255, 1.3]), torch.uint8)
    assert t.dtype == torch.uint8 and t.tolist() == [0, 2, 255]


def test_require_unit_refuses_integers_and_floats_on_another_scale() -> None:
    with pytest.raises(PixelScaleError, match=r"f expects floats on \[0, 1\], got uint8"):
        require_unit(_rgb(), "f")
    with pytest.raises(PixelScaleError, match=r"values in \[0, 200\]"):
        require_unit(np.array([0.0, 200.0]), "f")
    # small overshoot (bicubic ringing) is still the unit scale
    assert require_unit(np.array([-0.1, 1.1]), "f").dtype == np.float64


# -- the functions that compute on [0, 1] refuse raw integers -------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("function", [rgb2y, rgb2ycbcr, ycbcr2rgb, bicubic_clipped, make_pair, to_channels],
                         ids=lambda f: getattr(f, "__name__", ""))
def test_unit_scale_functions_refuse_raw_integer_pixels(function: object, dtype: type) -> None:
    """rgb2y of a uint8 image was 0-255 values read as [0, 1]; make_pair's PSNR and the training
    patches (to_channels) came out 255 times too bright: now a PixelScaleError names the fix."""
    call = {rgb2y: lambda a: rgb2y(a), rgb2ycbcr: lambda a: rgb2ycbcr(a), ycbcr2rgb: lambda a: ycbcr2rgb(a),
            bicubic_clipped: lambda a: bicubic_clipped(a, 2), make_pair: lambda a: make_pair(a, 2),
            to_channels: lambda a: to_channels(a, 1)}[function]
    with pytest.raises(PixelScaleError, match="to_unit"):
        call(_rgb(dtype))
    with pytest.raises(PixelScaleError, match="values in"):  # 0-255 as floats: the same mistake
        call(_rgb(dtype).astype(np.float64))
    assert call(to_unit(_rgb(dtype))) is not None  # the same pixels on [0, 1] are taken


def test_the_same_picture_scores_the_same_from_8_and_16_bits() -> None:
    """make_pair on LoadedImage-style floats: the depth of the file does not change the scale."""
    raw8 = _rgb(np.uint8)
    raw16 = raw8.astype(np.uint16) * 257
    (gt8, bic8), (gt16, bic16) = make_pair(to_unit(raw8), 2), make_pair(to_unit(raw16), 2)
    assert np.allclose(gt8, gt16) and np.allclose(bic8, bic16) and 16.0 <= gt8.min() and gt8.max() <= 235.0


def test_tensor_colour_conversion_and_the_engine_refuse_integers_read_as_floats() -> None:
    for function in (rgb2ycbcr_tensor, ycbcr2rgb_tensor):
        with pytest.raises(PixelScaleError):
            function(torch.zeros(3, 4, 4, dtype=torch.uint8))
    up = Upscaler(VDSR(VDSRConfig(depth=3, width=4)).eval(), device="cpu", backend="torch", precision="fp32", tile=None)
    image = torch.from_numpy(_rgb().transpose(2, 0, 1).copy())[None]
    # integers are the file's values, read through their peak; 0-255 floats are refused
    out = up.upscale(image, 2)
    assert out.dtype == torch.float32 and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    with pytest.raises(PixelScaleError, match="Upscaler.blocks"):
        up.upscale(image.float(), 2)


# -- training data ----------------------------------------------------------------------------------

def test_training_data_on_another_scale_is_a_data_error(tmp_path: Path) -> None:
    """An HDF5 of 0-255 float patches (or a sampler given such images) is refused when read,
    instead of training on the wrong scale (losses of 30-39, as the broken path gave)."""
    x = np.random.default_rng(1).uniform(0, 255, size=(8, 1, 21, 21)).astype(np.float32)
    path = tmp_path / "raw.h5"
    with h5py.File(path, "w") as f:
        f["input"], f["label"] = x, x
    patches = H5Patches(path)
    with pytest.raises(DataError, match="divided by 255"):
        patches.batch(4)
    patches.close()
    with h5py.File(path, "w") as f:
        f["input"], f["label"] = x / 255, x / 255
    patches = H5Patches(path)
    assert patches.batch(4)[1].max() <= 1.0
    patches.close()
    bad = DegradedImage(hr=x[0], bicubic=x[0], scale=2)
    with pytest.raises(DataError, match=r"\[0, 1\] scale"):
        PatchSampler([bad], patch=11)
