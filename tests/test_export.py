"""Export: ONNX Runtime equals PyTorch within 1e-4 (dynamic sizes, tiled too); TorchScript loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import DATASETS, needs_shared, tiny_model
from vdsr.api import run_network
from vdsr.cli import main
from vdsr.weights import load_model


def test_ort_backend_equals_torch(tmp_path: Path) -> None:
    model = tiny_model(depth=8, width=16)
    x = np.random.default_rng(0).random((1, 57, 83)).astype(np.float32)
    ref = run_network(model, x, tile=None, backend="torch")
    fast = run_network(model, x, tile=None, backend="onnxruntime")
    assert np.abs(ref - fast).max() < 1e-4
    assert np.abs(ref - run_network(model, x, tile=20, backend="onnxruntime")).max() < 1e-4
    # The cached session follows weight changes.
    with torch.no_grad():
        model.output.weight.mul_(2)
    assert np.abs(run_network(model, x, tile=None, backend="onnxruntime")
                  - run_network(model, x, tile=None, backend="torch")).max() < 1e-4


def test_export_cli_onnx_and_torchscript(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path, ts_path = tmp_path / "m.onnx", tmp_path / "m.pt"
    assert main(["export", str(tiny_weights), "--onnx", str(onnx_path), "--torchscript", str(ts_path)]) == 0
    model, _ = load_model(tiny_weights)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for h, w in ((17, 23), (64, 40)):  # dynamic height and width
        x = np.random.default_rng(h).random((1, 1, h, w)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert np.abs(sess.run(None, {"input": x})[0] - ref).max() < 1e-4
        scripted = torch.jit.load(str(ts_path))
        with torch.no_grad():
            assert np.abs(scripted(torch.from_numpy(x)).numpy() - ref).max() < 1e-5
    assert main(["export", str(tiny_weights), "--onnx", str(onnx_path)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_int8_backend_close_to_fp32_cached_and_silent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vdsr.export as export

    monkeypatch.setenv("VDSR_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model(depth=8, width=16)
    x = next(export.calibration_inputs(1))[0, :, :60, :72]  # a natural (bicubic-degraded) image
    ref = run_network(model, x, tile=None, backend="torch")
    out = run_network(model, x, tile=None, precision="int8")
    assert out.shape == ref.shape
    err = np.abs(out - ref)
    assert 0 < err.max() < 0.02 and err.mean() < 2e-3  # quantised: close, not equal
    graph = __import__("onnx").load(next((tmp_path / "cache").glob("int8-*.onnx"))).graph
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) > 8  # the body is quantised
    captured = capsys.readouterr()  # onnxruntime's calibration chatter is kept off the terminal
    assert captured.out == "" and captured.err == ""
    cached = list((tmp_path / "cache").glob("int8-*.onnx"))
    assert len(cached) == 1
    # A second model object with the same weights reuses the cache instead of recalibrating.
    monkeypatch.setattr(export, "onnx_int8_bytes", lambda m: pytest.fail("recalibrated"))
    again = tiny_model(depth=8, width=16)
    assert np.array_equal(run_network(again, x, tile=None, precision="int8"), out)
    # A damaged cache file is recalibrated and replaced, not fed to onnxruntime.
    cached[0].write_bytes(b"\x00garbage")
    monkeypatch.undo()
    monkeypatch.setenv("VDSR_CACHE_DIR", str(tmp_path / "cache"))
    fresh = tiny_model(depth=8, width=16)
    assert np.array_equal(run_network(fresh, x, tile=None, precision="int8"), out)
    assert cached[0].stat().st_size > 1000
    # New weights get their own entry.
    monkeypatch.undo()
    monkeypatch.setenv("VDSR_CACHE_DIR", str(tmp_path / "cache"))
    with torch.no_grad():
        again.output.weight.mul_(2)
    run_network(again, x, tile=None, precision="int8")
    assert len(list((tmp_path / "cache").glob("int8-*.onnx"))) == 2


def test_int8_unwritable_cache_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("VDSR_CACHE_DIR", str(blocker / "cache"))
    model = tiny_model(depth=6, width=8)
    x = np.random.default_rng(1).random((1, 30, 30)).astype(np.float32)
    assert run_network(model, x, tile=None, precision="int8").shape == x.shape


def test_int8_refuses_gpu_device() -> None:
    from vdsr.errors import InvalidArgument

    # "cannot be used" on machines without CUDA (the device is checked first), "CPU only" on others
    with pytest.raises(InvalidArgument, match="CPU only|cannot be used"):
        run_network(tiny_model(), np.zeros((1, 8, 8), np.float32), device="cuda", precision="int8")


@needs_shared
@pytest.mark.parametrize("which", ["default", "official"])
@pytest.mark.slow
def test_int8_psnr_within_005_db_of_fp32_on_set5(which: str, official_weights: Path) -> None:
    from vdsr.engine import Upscaler
    from vdsr.evaluate import EvalConfig, evaluate_folder

    model, _ = load_model(None if which == "default" else official_weights)
    fp32 = evaluate_folder(Upscaler(model, precision="fp32"), DATASETS / "Set5", EvalConfig(ssim=False))
    int8 = evaluate_folder(Upscaler(model, precision="int8"), DATASETS / "Set5", EvalConfig(ssim=False))
    for a, b in zip(fp32, int8, strict=True):
        assert abs(a.psnr - b.psnr) < 0.05, (a.scale, a.psnr, b.psnr)


def test_export_cli_onnx_int8(tmp_path: Path) -> None:
    from vdsr.weights import WeightsMetadata, save_weights

    tiny_weights, path = tmp_path / "tiny8.safetensors", tmp_path / "m8.onnx"
    tiny = tiny_model(depth=8, width=16)
    save_weights(tiny_weights, tiny.state_dict(), WeightsMetadata(config=tiny.config, source="test"))
    assert main(["export", str(tiny_weights), "--onnx-int8", str(path)]) == 0
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    model, _ = load_model(tiny_weights)
    x = np.random.default_rng(2).random((1, 1, 33, 47)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(sess.run(None, {"input": x})[0] - ref).max() < 0.05


def test_upscale_cli_int8_backend(tmp_path: Path) -> None:
    from tests.conftest import random_rgb, write_png
    from vdsr.images import load_image
    from vdsr.weights import WeightsMetadata, save_weights

    weights = tmp_path / "tiny8.safetensors"
    tiny = tiny_model(depth=8, width=16)
    save_weights(weights, tiny.state_dict(), WeightsMetadata(config=tiny.config, source="test"))
    src = write_png(tmp_path / "in.png", random_rgb(24, 30))
    out = tmp_path / "out.png"
    assert main(["upscale", str(src), "-s", "2", "-o", str(out), "--weights", str(weights),
                 "--backend", "int8"]) == 0
    assert load_image(out).pixels.shape == (48, 60, 3)
