"""vdsr.engine: the Upscaler: ensembles, tiling and its receptive-field check, progress and
cancelling, out-of-memory retry, reduced precision, the colour pipeline tile by tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import _input, tiny_model
from vdsr.api import run_network, upscale
from vdsr.color import rgb2ycbcr, ycbcr2rgb
from vdsr.engine import Upscaler, check_tile
from vdsr.errors import VDSRError
from vdsr.resize import imresize
from vdsr.transforms import dihedral, dihedral_inverse


def test_ensemble_equals_the_mean_of_eight_transformed_runs() -> None:
    model = tiny_model(depth=5, width=8)
    with torch.no_grad():  # a non-zero output layer, so the transforms give different residuals
        model.output.weight.normal_(0, 0.05)
    x = _input()
    plain = Upscaler(model, backend="torch", precision="fp32", tile=None)
    by_hand = sum(dihedral_inverse(plain.network(dihedral(x, k)), k) for k in range(8)) / 8
    ensemble = Upscaler(model, backend="torch", precision="fp32", tile=None, ensemble=True).network(x)
    assert torch.allclose(ensemble, by_hand, atol=1e-6)
    assert not torch.allclose(ensemble, plain.network(x), atol=1e-4)  # it does something
    tiled = Upscaler(model, backend="torch", precision="fp32", tile=16, ensemble=True).network(x)
    assert torch.allclose(tiled, ensemble, atol=1e-5)


def test_progress_counts_tiles() -> None:
    calls: list[tuple[int, int]] = []
    up = Upscaler(tiny_model(), backend="torch", precision="fp32", tile=16, ensemble=True)
    up.network(_input(40, 33), progress=lambda done, total: calls.append((done, total)))
    # tile 16 at depth 4: cores of 8 pixels, 5 x 5 of them (each tile's 8 passes run together)
    assert calls == [(i, 25) for i in range(1, 26)]
    calls.clear()
    rgb = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 20, 17), dtype=np.uint8))
    blocks = list(up.blocks(rgb, 2, progress=lambda done, total: calls.append((done, total))))
    assert len(blocks) == 25 and calls[-1] == (25, 25)


def test_an_exception_from_progress_stops_the_work() -> None:
    """How the server cancels a job whose client has gone: raise from the progress callback."""

    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        if done == 2:
            raise Stop

    up = Upscaler(tiny_model(), backend="torch", precision="fp32", tile=16)
    rgb = torch.zeros((3, 30, 30), dtype=torch.uint8)
    with pytest.raises(Stop):
        list(up.blocks(rgb, 2, progress=stop))


class _FlakyBackend:
    """Fails like a GPU out of memory whenever a tile is larger than ``fits`` pixels a side."""

    name, precision, device = "fake", "fp32", torch.device("cpu")

    def __init__(self, model: torch.nn.Module, fits: int) -> None:
        self.model, self.fits, self.sizes = model, fits, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        with torch.no_grad():
            return self.model(x)


def test_out_of_memory_halves_the_tile_and_finishes() -> None:
    model = tiny_model(depth=4)
    x = _input(100, 90)
    fake = _FlakyBackend(model, fits=40)
    up = Upscaler(model, tile=None, backend_instance=fake)
    with pytest.warns(UserWarning, match="out of memory.*continuing with 25-pixel tiles"):
        out = up.network(x)
    whole = Upscaler(model, backend="torch", precision="fp32", tile=None).network(x)
    assert torch.allclose(out, whole, atol=1e-5)
    assert up.tile == 25  # 100 -> 50 -> 25: kept for the next image


def test_out_of_memory_below_the_receptive_field_is_an_error() -> None:
    model = tiny_model(depth=4)
    up = Upscaler(model, tile=None, backend_instance=_FlakyBackend(model, fits=5))
    with pytest.warns(UserWarning), pytest.raises(VDSRError, match="out of memory"):
        up.network(_input(40, 40))


def test_tile_smaller_than_receptive_field_is_refused() -> None:
    model = tiny_model(depth=20)
    with pytest.raises(VDSRError, match="receptive field"):
        check_tile(40, model.config.receptive_field)
    assert check_tile(0, model.config.receptive_field) is None


def test_reduced_precision_keeps_the_input_path_exact() -> None:
    model = tiny_model(depth=4)
    with torch.no_grad():  # a zero output layer makes the network the identity
        model.output.weight.zero_()
        model.output.bias.zero_()
    x = _input()
    for precision in ("bf16", "bf16-edge", "fp16"):
        up = Upscaler(model, backend="torch", precision=precision, tile=None)
        assert up.precision == precision
        assert torch.equal(up.network(x), x)  # fp32 input + a 16-bit zero residual
    with torch.no_grad():
        model.output.weight.normal_(0, 0.05)
    ref = Upscaler(model, backend="torch", precision="fp32", tile=None).network(x)
    low = Upscaler(model, backend="torch", precision="bf16", tile=None).network(x)
    edge = Upscaler(model, backend="torch", precision="bf16-edge", tile=None).network(x)
    assert 0 < (low - ref).abs().max() < 0.02
    assert 0 < (edge - ref).abs().max() < 0.02


def _whole_image_reference(model: torch.nn.Module, rgb8: np.ndarray, scale: float) -> np.ndarray:
    """The pipeline of earlier releases, whole planes in NumPy: Y and Cb/Cr upscaled whole,
    the network on the whole Y plane, back to RGB, rounded."""
    size = (round(rgb8.shape[0] * scale), round(rgb8.shape[1] * scale))
    ycbcr = rgb2ycbcr(rgb8 / 255.0)
    y = imresize(ycbcr[..., 0], scale=scale, size=size).astype(np.float32)
    sr_y = run_network(model, y[None], tile=None, backend="torch")[0].astype(np.float64)
    cbcr = [imresize(ycbcr[..., c], scale=scale, size=size) for c in (1, 2)]
    rgb = np.clip(ycbcr2rgb(np.stack([sr_y, *cbcr], axis=-1)), 0, 1)
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("scale", [2, 3, 2.5])
def test_tile_by_tile_colour_pipeline_equals_whole_planes(scale: float) -> None:
    """Each tile's bicubic input is made from the few low-resolution pixels it reads; the result
    equals whole-plane processing (the network's tiling is exact; rounding may move a level)."""
    model = tiny_model(depth=4)
    rgb8 = np.random.default_rng(3).integers(0, 256, (41, 37, 3), dtype=np.uint8)
    ref = _whole_image_reference(model, rgb8, scale)
    for tile in (None, 16, 23):
        out = upscale(rgb8, scale, model=model, tile=tile, backend="torch", precision="fp32")
        diff = np.abs(out.astype(int) - ref.astype(int))
        assert out.shape == ref.shape and diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_tensor_upscale_matches_the_numpy_face() -> None:
    model = tiny_model(depth=4)
    rgb = np.random.default_rng(3).random((23, 31, 3))
    ref = upscale(rgb, 3, model=model, tile=None, backend="torch", precision="fp32")
    up = Upscaler(model, backend="torch", precision="fp32", tile=None)
    out = up.upscale(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None], 3)
    assert out.shape == (1, 3, 69, 93) and out.dtype == torch.float32
    assert np.abs(out[0].numpy().transpose(1, 2, 0) - ref).max() < 1e-6
    grey = up.upscale(torch.from_numpy(rgb[None, None, ..., 0].copy()), 2.5)
    assert grey.shape == (1, 1, 58, 78)


def test_integer_output_equals_rounded_float_output() -> None:
    model = tiny_model(depth=4)
    rgb = np.random.default_rng(4).random((300, 40, 3))
    as_float = upscale(rgb, 3, model=model, backend="torch", precision="fp32")
    up = Upscaler(model, backend="torch", precision="fp32")
    out = torch.empty((3, 900, 120), dtype=torch.uint8)
    up.upscale_into(torch.from_numpy(rgb.transpose(2, 0, 1).copy()), 3, out)
    assert np.array_equal(out.numpy().transpose(1, 2, 0),
                          np.clip(np.round(as_float * 255), 0, 255).astype(np.uint8))
