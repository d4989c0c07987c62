"""vdsr.export: ONNX (fp32 and int8) and TorchScript files equal PyTorch (dynamic sizes); the int8
graph keeps the layers it should in fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import tiny_model
from vdsr.cli import main
from vdsr.weights import load_model


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


def test_int8_split_is_a_parameter() -> None:
    import onnx

    from vdsr.export import _int8_excluded, onnx_bytes

    graph = onnx.load_from_string(onnx_bytes(tiny_model(depth=8, width=8))).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    last = graph.node[-1].name
    assert set(_int8_excluded(graph)) == {*convs[:3], convs[-1], last}  # the package's recipe
    assert set(_int8_excluded(graph, 5, 2)) == {*convs[:5], *convs[-2:], last}
    assert set(_int8_excluded(graph, 0, 0)) == {last}
