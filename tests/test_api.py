"""vdsr.api: the NumPy and file API over the engine: exact tiling, sizes, colour handling, alpha
and dtypes, the limits it checks, the file and bytes faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import random_rgb, tiny_model
from vdsr.api import run_network, upscale, upscale_image, write_upscaled
from vdsr.engine import Upscaler
from vdsr.errors import InvalidArgument, TooLarge, VDSRError
from vdsr.io.images import load_image


@pytest.mark.parametrize("tile", [13, 16, 29, 50])
def test_tiled_equals_whole_image(tile: int) -> None:
    """Tiles smaller than the border effects (depth 6 -> halo 6, receptive field 13) included."""
    model = tiny_model(depth=6, width=8)
    x = np.random.default_rng(0).random((1, 71, 53)).astype(np.float32)
    whole = run_network(model, x, tile=None)
    tiled = run_network(model, x, tile=tile)
    assert np.abs(whole - tiled).max() < 1e-5


@pytest.mark.slow
def test_tiled_equals_whole_default_depth() -> None:
    model = tiny_model(depth=20, width=8)
    x = np.random.default_rng(1).random((1, 100, 90)).astype(np.float32)
    whole = run_network(model, x, tile=None)
    for tile in (41, 64):
        assert np.abs(whole - run_network(model, x, tile=tile)).max() < 1e-5
    assert np.abs(whole - x).max() > 1e-3  # the model does something


@pytest.mark.parametrize("scale", [2, 3, 4, 2.5, 1.3])
def test_output_size_is_rounded_scale(scale: float) -> None:
    model = tiny_model()
    img = random_rgb(23, 31)
    with pytest.warns(UserWarning) if not 2 <= scale <= 4 else _nowarn():
        out = upscale(img, scale, model=model, precision="fp32")
    assert out.shape == (round(23 * scale), round(31 * scale), 3)
    assert out.dtype == np.uint8


class _nowarn:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def test_tiny_images_work() -> None:
    model = tiny_model()
    assert upscale(np.full((1, 1, 3), 128, np.uint8), 2, model=model).shape == (2, 2, 3)
    assert upscale(np.full((2, 3), 9, np.uint8), 3, model=model).shape == (6, 9)


def test_identity_model_gives_bicubic_in_ycbcr() -> None:
    """With a zero residual, colour output equals bicubic RGB (YCbCr is linear)."""
    from vdsr.api import bicubic_upscale
    from vdsr.nn.model import VDSR, VDSRConfig

    model = VDSR(VDSRConfig(depth=3, width=4)).eval()  # zero output layer = identity
    img = random_rgb(20, 24).astype(np.float64) / 255
    out = upscale(img, 2, model=model, precision="fp32")
    assert np.abs(out - np.clip(bicubic_upscale(img, 2), 0, 1)).max() < 1e-6


def test_dtypes_alpha_and_gray() -> None:
    model = tiny_model()
    rgba = np.dstack([random_rgb(10, 12), np.full((10, 12), 200, np.uint8)])
    out = upscale(rgba, 2, model=model, precision="fp32")
    assert out.shape == (20, 24, 4) and out.dtype == np.uint8
    assert np.abs(out[..., 3].astype(int) - 200).max() <= 1
    u16 = (random_rgb(10, 12).astype(np.uint16) * 257)
    out16 = upscale(u16, 2, model=model, precision="fp32")
    assert out16.dtype == np.uint16 and out16.max() > 255
    flt = random_rgb(10, 12).astype(np.float32) / 255
    outf = upscale(flt, 2, model=model, precision="fp32")
    assert outf.dtype == np.float32 and 0 <= outf.min() and outf.max() <= 1
    gray = random_rgb(10, 12)[..., 0]
    assert upscale(gray, 2, model=model, precision="fp32").shape == (20, 24)


def test_three_channel_model() -> None:
    model = tiny_model(channels=3)
    out = upscale(random_rgb(9, 11), 2, model=model, precision="fp32")
    assert out.shape == (18, 22, 3)


def test_inference_mode_no_grad() -> None:
    """run_network on the torch backend builds no autograd graph (nothing is saved for a
    backward pass: the memory of a training forward), and leaves grad mode as it found it. The
    control shows the hook sees what a grad-mode forward saves."""
    model = tiny_model()
    x = np.random.default_rng(0).random((1, 8, 8)).astype(np.float32)
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.from_numpy(x)[None])  # the control: a plain forward saves its inputs
        assert saved
        saved.clear()
        run_network(model, x, backend="torch", device="cpu")
    assert saved == [] and torch.is_grad_enabled()
    assert all(p.grad is None for p in model.parameters())


def test_6_whole_image_inference_keeps_borders() -> None:
    """Test-time sub-images were merged and borders lost; ours runs the whole image (or exact
    tiles) and returns every pixel."""
    model = tiny_model(depth=5)
    x = np.random.default_rng(0).random((1, 45, 50)).astype(np.float32)
    out = run_network(model, x, tile=None)
    assert out.shape == x.shape
    assert np.abs(out - run_network(model, x, tile=11)).max() < 1e-5


def test_python_api_refuses_float_images_on_another_scale_and_huge_outputs() -> None:
    model = tiny_model()
    with pytest.raises(InvalidArgument, match=r"must be in \[0, 1\].*255"):
        upscale(np.full((8, 8, 3), 200.0), 2, model=model, precision="fp32")
    with pytest.raises(TooLarge) as info:
        upscale(np.zeros((100, 100), np.uint8), 4, model=model, max_output_pixels=100_000, precision="fp32")
    assert (info.value.what, info.value.pixels, info.value.limit) == ("output", 160_000, 100_000)


def test_bicubic_refuses_an_absurd_output_size() -> None:
    """Found by the fuzz test: the bicubic upscaler must check the size before allocating."""
    from vdsr.api import bicubic_upscale

    with pytest.raises(VDSRError, match="too large"):
        bicubic_upscale(np.zeros((4, 9), np.uint8), 3299167961088.0)


def test_the_file_and_the_bytes_faces_agree(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(src)
    image = load_image(src)
    up = Upscaler(tiny_model(), device="cpu", precision="fp32", backend="torch", tile=48)
    write_upscaled(up, image, tmp_path / "out.png", 3)
    assert upscale_image(up, image, 3) == (tmp_path / "out.png").read_bytes()
