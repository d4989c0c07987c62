"""The tensor engine: ensembles, tiling, precision, backends, out-of-memory retry, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import tiny_model
from vdsr.backends import create_backend, pick_backend
from vdsr.engine import Upscaler, dihedral, dihedral_inverse
from vdsr.errors import BackendUnavailable, InvalidArgument, TooLarge, VDSRError
from vdsr.inference import upscale, upscale_array, upscale_pixels
from vdsr.precision import resolve_precision


def _input(h: int = 45, w: int = 61, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((1, 1, h, w)).astype(np.float32))


@pytest.mark.parametrize("k", range(8))
def test_dihedral_inverse_is_exact(k: int) -> None:
    x = _input()
    assert torch.equal(dihedral_inverse(dihedral(x, k), k), x)
    assert len({tuple(dihedral(x, j).flatten()[:40].tolist()) for j in range(8)}) == 8


def test_ensemble_equals_the_mean_of_eight_transformed_runs() -> None:
    model = tiny_model(depth=5, width=8)
    with torch.no_grad():  # a non-zero output layer, so the transforms give different residuals
        model.output.weight.normal_(0, 0.05)
    x = _input()
    plain = Upscaler(model, backend="torch", tile=None)
    by_hand = sum(dihedral_inverse(plain.network(dihedral(x, k)), k) for k in range(8)) / 8
    ensemble = Upscaler(model, backend="torch", tile=None, ensemble=True).network(x)
    assert torch.allclose(ensemble, by_hand, atol=1e-6)
    assert not torch.allclose(ensemble, plain.network(x), atol=1e-4)  # it does something
    tiled = Upscaler(model, backend="torch", tile=16, ensemble=True).network(x)
    assert torch.allclose(tiled, ensemble, atol=1e-5)


def test_progress_counts_tiles_and_ensemble_passes() -> None:
    calls: list[tuple[int, int]] = []
    up = Upscaler(tiny_model(), backend="torch", tile=16, ensemble=True)
    up.network(_input(40, 33), progress=lambda done, total: calls.append((done, total)))
    # tile 16 at depth 4: cores of 8 pixels, 5 x 5 of them (the shape turns with k), 8 passes
    assert calls[-1] == (8 * 25, 8 * 25) and len(calls) == 200


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
    whole = Upscaler(model, backend="torch", tile=None).network(x)
    assert torch.allclose(out, whole, atol=1e-5)
    assert up.tile == 25  # 100 -> 50 -> 25: kept for the next image


def test_out_of_memory_below_the_receptive_field_is_an_error() -> None:
    model = tiny_model(depth=4)
    up = Upscaler(model, tile=None, backend_instance=_FlakyBackend(model, fits=5))
    with pytest.warns(UserWarning), pytest.raises(VDSRError, match="out of memory"):
        up.network(_input(40, 40))


def test_precision_rule() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu, "torch") == "fp32"
    assert resolve_precision("auto", cuda, "torch") == "fp16"
    assert resolve_precision("auto", cpu, "onnxruntime") == "fp32"
    assert resolve_precision("bf16", cpu, "torch") == "bf16"
    assert resolve_precision("auto", cpu, "int8") == "int8"
    with pytest.raises(InvalidArgument, match="CUDA"):
        resolve_precision("tf32", cpu, "torch")
    with pytest.raises(InvalidArgument, match="fp32 only"):
        resolve_precision("fp16", cpu, "onnxruntime")
    with pytest.raises(InvalidArgument, match="unknown precision"):
        resolve_precision("fp8", cpu, "torch")
    # auto picks ONNX Runtime on CPU for fp32 only; a lower precision needs PyTorch
    assert pick_backend("auto", cpu, "auto") == "onnxruntime"
    assert pick_backend("auto", cpu, "bf16") == "torch"
    assert pick_backend("auto", cuda, "auto") == "torch"
    with pytest.raises(BackendUnavailable, match="CPU only"):
        pick_backend("int8", cuda)


def test_reduced_precision_keeps_the_input_path_exact() -> None:
    model = tiny_model(depth=4)
    with torch.no_grad():  # a zero output layer makes the network the identity
        model.output.weight.zero_()
        model.output.bias.zero_()
    x = _input()
    for precision in ("bf16", "fp16"):
        up = Upscaler(model, backend="torch", precision=precision, tile=None)
        assert up.precision == precision
        assert torch.equal(up.network(x), x)  # fp32 input + a 16-bit zero residual
    with torch.no_grad():
        model.output.weight.normal_(0, 0.05)
    ref = Upscaler(model, backend="torch", precision="fp32", tile=None).network(x)
    low = Upscaler(model, backend="torch", precision="bf16", tile=None).network(x)
    assert 0 < (low - ref).abs().max() < 0.02


def test_tensor_upscale_matches_the_numpy_path() -> None:
    model = tiny_model(depth=4)
    with torch.no_grad():
        model.output.weight.normal_(0, 0.05)
    rgb = np.random.default_rng(3).random((23, 31, 3))
    ref = upscale_array(model, rgb, 3, tile=None, backend="torch")
    up = Upscaler(model, backend="torch", tile=None)
    out = up.upscale(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None], 3)
    assert out.shape == (1, 3, 69, 93) and out.dtype == torch.float32
    assert np.abs(out[0].numpy().transpose(1, 2, 0) - ref).max() < 1e-5
    grey = up.upscale(torch.from_numpy(rgb[None, None, ..., 0].copy()), 2.5)
    assert grey.shape == (1, 1, 58, 78)


def test_numpy_output_as_integers_equals_rounded_float() -> None:
    model = tiny_model(depth=4)
    rgb = np.random.default_rng(4).random((300, 40, 3))  # several row bands at x3
    up = Upscaler(model, backend="torch", tile=None)
    as_float = upscale_pixels(up, rgb, 3)
    as_uint8 = upscale_pixels(up, rgb, 3, np.uint8)
    assert as_uint8.dtype == np.uint8
    assert np.array_equal(as_uint8, np.clip(np.round(as_float * 255), 0, 255).astype(np.uint8))


def test_python_api_refuses_float_images_on_another_scale_and_huge_outputs() -> None:
    model = tiny_model()
    with pytest.raises(InvalidArgument, match=r"must be in \[0, 1\].*255"):
        upscale(np.full((8, 8, 3), 200.0), 2, model=model)
    with pytest.raises(TooLarge) as info:
        upscale(np.zeros((100, 100), np.uint8), 4, model=model, max_output_pixels=100_000)
    assert (info.value.what, info.value.pixels, info.value.limit) == ("output", 160_000, 100_000)


def test_backends_share_one_protocol() -> None:
    model = tiny_model()
    x = _input()
    ref = create_backend(model, "torch")(x)
    for name in ("onnxruntime", "int8"):
        backend = create_backend(model, name)
        assert backend.name == name and backend.device.type == "cpu"
        assert backend(x).shape == ref.shape


@pytest.mark.subprocess
def test_import_vdsr_and_cli_parser_do_not_import_torch() -> None:
    code = ("import sys, vdsr, vdsr.cli; vdsr.cli.build_parser(); "
            "print('torch' in sys.modules, vdsr.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "False"


def test_banded_bicubic_refuses_an_absurd_output_size() -> None:
    """Found by the fuzz test: the banded upscaler must check the size as imresize does."""
    from vdsr.inference import bicubic_upscale

    with pytest.raises(VDSRError, match="too large"):
        bicubic_upscale(np.zeros((4, 9), np.uint8), 3299167961088.0)
