"""Exporting a model (ONNX with dynamic height/width, TorchScript) and running it with
ONNX Runtime, the fastest CPU path measured here (see BENCHMARKS.md)."""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from vdsr.errors import VDSRError
from vdsr.fileio import atomic_path
from vdsr.model import VDSR


def onnx_bytes(model: VDSR, opset: int = 17) -> bytes:
    """The model as an ONNX graph, input ``input`` ``(N, C, H, W)`` with dynamic N, H and W."""
    model = model.eval()
    x = torch.zeros(1, model.config.channels, 48, 48)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(  # a BytesIO target is accepted at runtime
            model, (x,), buf,  # type: ignore[arg-type]
            input_names=["input"], output_names=["output"], opset_version=opset,
            dynamic_axes={"input": {0: "n", 2: "height", 3: "width"},
                          "output": {0: "n", 2: "height", 3: "width"}},
            dynamo=False,
        )
    return buf.getvalue()


def export_onnx(model: VDSR, path: str | os.PathLike[str]) -> None:
    """Write the model as ONNX (dynamic height and width) to ``path`` atomically."""
    data = onnx_bytes(model)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def export_torchscript(model: VDSR, path: str | os.PathLike[str]) -> None:
    """Write a TorchScript (traced) module to ``path`` atomically; ``torch.jit.load`` reads it."""
    model = model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.zeros(1, model.config.channels, 48, 48))
    with atomic_path(path) as tmp:
        traced.save(str(tmp))


def _version_key(model: VDSR) -> tuple[int, ...]:
    # In-place updates (optimiser steps, load_state_dict) bump each tensor's version counter.
    return tuple(p._version for p in model.parameters())


class OrtRunner:
    """ONNX Runtime session for a :class:`VDSR`: ``(N, C, H, W)`` float32 array -> same shape."""

    def __init__(self, model: VDSR, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise VDSRError("onnxruntime is not installed (pip install onnxruntime)") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(onnx_bytes(model), options,
                                            providers=["CPUExecutionProvider"])
        self.key = _version_key(model)

    def __call__(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        out: Any = self.session.run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]
        return np.asarray(out)


def ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def runner_for(model: VDSR) -> OrtRunner:
    """A cached :class:`OrtRunner` for ``model``, rebuilt if its weights changed since."""
    runner: OrtRunner | None = getattr(model, "_ort_runner", None)
    if runner is None or runner.key != _version_key(model):
        runner = OrtRunner(model)
        object.__setattr__(model, "_ort_runner", runner)
    return runner
