"""vdsr.rgb_onnx: the self-contained RGB ONNX graph (``vdsr export --rgb-onnx``): MATLAB's
bicubic as convolutions, ``vdsr upscale``'s result in ONNX Runtime, the fp16 variant, the
files the command writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import random_rgb, tiny_model
from vdsr.api import upscale
from vdsr.cli import main
from vdsr.errors import BadScale
from vdsr.resize import imresize
from vdsr.rgb_onnx import (
    OPSET,
    MatlabBicubicUp,
    check_integer_scale,
    rgb_onnx_bytes,
    symmetric_pad,
)
from vdsr.weights import load_model

# The operators README's 'Use in other tools' lists for TensorRT (plain body).
DOCUMENTED_OPS = {"Conv", "Slice", "Concat", "DepthToSpace", "Relu", "Add", "Clip", "Cast",
                  "Identity", "Shape", "Gather", "Unsqueeze", "Sub", "Constant"}


def _psnr8(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """PSNR and max difference of two [0, 1] images after quantising to 8 bits as PNGs are."""
    a8 = np.round(np.clip(a, 0, 1) * 255).astype(np.int64)
    b8 = np.round(np.clip(b, 0, 1) * 255).astype(np.int64)
    mse = float(np.mean((a8 - b8) ** 2))
    return (float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)), int(np.abs(a8 - b8).max())


def _session(data: bytes) -> Any:
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _run(session: Any, rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float in [0, 1] through the ONNX model, back as ``(S*H, S*W, 3)``."""
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)
    return np.asarray(session.run(None, {"input": x})[0][0]).transpose(1, 2, 0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_symmetric_pad_is_matlabs_border(n: int) -> None:
    x = torch.arange(float(n)).reshape(1, 1, 1, n)
    ours = symmetric_pad(x, 3)[0, 0, 0].numpy()
    assert np.array_equal(ours, np.pad(np.arange(float(n)), 2, mode="symmetric"))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_convolutions_equal_matlab_imresize(scale: int) -> None:
    rng = np.random.default_rng(scale)
    up = MatlabBicubicUp(scale).double()
    for h, w in ((1, 1), (2, 3), (37, 53)):
        img = rng.random((h, w, 3))
        ref = imresize(img, scale=scale, size=(scale * h, scale * w))
        ours = up(torch.from_numpy(img.transpose(2, 0, 1))[None])[0].numpy().transpose(1, 2, 0)
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() < 1e-6  # float32 filter taps; MATLAB's own to 1e-6 too


@pytest.mark.parametrize("scale", [2, 3])
def test_rgb_onnx_equals_vdsr_upscale(scale: int) -> None:
    """The shipped model's RGB graph in ONNX Runtime vs ``vdsr upscale``: 8-bit PSNR >= 45 dB.

    Measured: max difference 1 grey level (float32 rounding at .5 boundaries), PSNR > 85 dB.
    """
    import onnx

    model, _ = load_model()
    data = rgb_onnx_bytes(model, scale)
    graph = onnx.load_from_string(data)
    assert graph.opset_import[0].version == OPSET
    assert {n.op_type for n in graph.graph.node} <= DOCUMENTED_OPS
    onnx.checker.check_model(graph, full_check=True)  # strict shape inference included
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["vdsr.scale"] == str(scale)
    assert json.loads(props["vdsr.model"])["depth"] == 20
    assert "[0, 1]" in props["vdsr.input"] and f"{scale}*H" in props["vdsr.output"]
    session = _session(data)
    for h, w in ((37, 53), (20, 31), (1, 1), (2, 5)):  # one graph, any size: H, W are dynamic
        rgb = np.random.default_rng(h).random((h, w, 3)) if h < 4 else \
            random_rgb(h, w, seed=h).astype(np.float64) / 255.0
        ours = _run(session, rgb)
        ref = upscale(rgb, scale, model=model, precision="fp32")
        assert ours.shape == ref.shape == (scale * h, scale * w, 3)
        psnr, max_diff = _psnr8(ours, ref)
        assert psnr >= 45.0 and max_diff <= 1, (psnr, max_diff)
    batch = np.stack([random_rgb(9, 12, seed=s).transpose(2, 0, 1) / 255.0 for s in (1, 2)])
    out = session.run(None, {"input": batch.astype(np.float32)})[0]
    assert out.shape == (2, 3, scale * 9, scale * 12) and 0.0 <= out.min() and out.max() <= 1.0


def test_rgb_onnx_fp16_keeps_float32_io() -> None:
    """The fp16 variant: fp16 weights, float32 input and output, runs on ONNX Runtime's CPU."""
    import onnx

    model, _ = load_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = rgb_onnx_bytes(model, 2, fp16=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not rounded
    graph = onnx.load_from_string(data)
    onnx.checker.check_model(graph)
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert graph.graph.input[0].type.tensor_type.elem_type == f32
    assert graph.graph.output[0].type.tensor_type.elem_type == f32
    assert any(t.data_type == f16 for t in graph.graph.initializer)
    rgb = random_rgb(37, 53, seed=3).astype(np.float64) / 255.0
    psnr, max_diff = _psnr8(_run(_session(data), rgb), upscale(rgb, 2, model=model, precision="fp32"))
    assert psnr >= 45.0, (psnr, max_diff)


def test_rgb_onnx_of_an_rgb_model() -> None:
    model = tiny_model(channels=3)
    rgb = random_rgb(15, 22, seed=4).astype(np.float64) / 255.0
    ours = _run(_session(rgb_onnx_bytes(model, 4)), rgb)
    psnr, max_diff = _psnr8(ours, upscale(rgb, 4, model=model, backend="torch", precision="fp32"))
    assert psnr >= 45.0 and max_diff <= 1, (psnr, max_diff)


@pytest.mark.parametrize("scale", [2.5, 1, 0, 17, float("nan"), "2", True])
def test_rgb_onnx_refuses_non_integer_scales(scale: object) -> None:
    with pytest.raises(BadScale):
        check_integer_scale(scale)


def test_cli_export_rgb_onnx(tmp_path: Path, tiny_weights: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    out = tmp_path / "vdsr.onnx"
    assert main(["export", str(tiny_weights), "--rgb-onnx", str(out), "--scale", "2", "3"]) == 0
    for scale in (2, 3):
        graph = onnx.load(str(tmp_path / f"vdsr_x{scale}.onnx"))
        props = {p.key: p.value for p in graph.metadata_props}
        assert props["vdsr.scale"] == str(scale) and props["vdsr.weights_source"] == "test"
    assert not out.exists()
    assert main(["export", str(tiny_weights), "--rgb-onnx", str(out), "--scale", "2"]) == 0
    assert out.exists()
    assert main(["export", str(tiny_weights), "--rgb-onnx", str(out), "--scale", "2"]) == 1
    assert "already exists" in capsys.readouterr().err
    for argv, message in ((["--rgb-onnx", str(out)], "needs --scale"),
                          (["--rgb-onnx", str(out), "--scale", "2.5", "--overwrite"], "integer"),
                          (["--onnx", str(tmp_path / "a.onnx"), "--fp16"], "--rgb-onnx only")):
        assert main(["export", str(tiny_weights), *argv]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "a.onnx").exists()
