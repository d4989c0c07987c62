"""Export: ONNX Runtime equals PyTorch within 1e-4 (dynamic sizes, tiled too); TorchScript loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import tiny_model
from vdsr.cli import main
from vdsr.inference import run_network
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
