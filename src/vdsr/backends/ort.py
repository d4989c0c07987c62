"""The ONNX Runtime backends (CPU): ``onnxruntime`` (fp32) and ``int8`` (statically quantised).

The int8 graph takes seconds to calibrate (:func:`vdsr.export.onnx_int8_bytes`), so it is cached
on disk by a hash of the weights; a cached file that is not a valid model is recalibrated and
replaced, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vdsr import export
from vdsr.errors import BackendUnavailable
from vdsr.fileio import atomic_path
from vdsr.model import VDSR

log = logging.getLogger(__name__)

INT8_VERSION = 1  # part of the cache key: bump when the quantisation recipe changes


def cache_dir() -> Path:
    """Where derived models are cached: ``$VDSR_CACHE_DIR``, else ``$XDG_CACHE_HOME/vdsr``."""
    if os.environ.get("VDSR_CACHE_DIR"):
        return Path(os.environ["VDSR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vdsr"


def _valid_onnx(data: bytes) -> bool:
    import onnx

    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception:  # protobuf and checker errors have no common base class
        return False
    return bool(model.graph.node) and [i.name for i in model.graph.input][:1] == ["input"]


def int8_cache_path(model: VDSR) -> Path:
    """The cache file for ``model``'s int8 graph: a hash of the recipe version, config and weights."""
    digest = hashlib.sha256(f"int8-v{INT8_VERSION}-{model.config}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return cache_dir() / f"int8-{digest.hexdigest()[:32]}.onnx"


def cached_int8_bytes(model: VDSR) -> bytes:
    """The int8 graph for ``model``: from the cache when valid, else calibrated and cached.

    A cache that cannot be written is skipped (the result is then just not reused).
    """
    path = int8_cache_path(model)
    try:
        data = path.read_bytes()
        if _valid_onnx(data):
            return data
        log.info("int8 cache %s is damaged; recalibrating", path)
    except OSError:
        pass
    log.info("calibrating the int8 model once for these weights (cached in %s)", path.parent)
    data = export.onnx_int8_bytes(model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError:
        pass
    return data


class OrtBackend:
    """An ONNX Runtime CPU session for ``model``'s weights as they are when it is built.

    ``(N, C, H, W)`` float32 tensor -> same shape, float32 CPU tensor (zero-copy both ways).
    """

    device = torch.device("cpu")

    def __init__(self, model: VDSR, int8: bool = False, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("onnxruntime", "onnxruntime is not installed") from None
        self.name = "int8" if int8 else "onnxruntime"
        self.precision = "int8" if int8 else "fp32"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        graph = cached_int8_bytes(model) if int8 else export.onnx_bytes(model)
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out: Any = self.session.run(None, {"input": array})[0]
        return torch.from_numpy(np.asarray(out))
