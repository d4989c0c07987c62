"""The ONNX Runtime backends (CPU): ``onnxruntime`` (fp32), ``int8`` and ``mixed`` (statically
quantised; ``mixed`` keeps more layers fp32: within 0.02 dB of fp32 where ``int8`` is within 0.05).

The int8 graph takes seconds to calibrate (:func:`vdsr.export.onnx_int8_bytes`), so it is cached
on disk by a hash of the weights; a cached file that is not a valid model, or that is a valid model
made for another key (stale: other weights, recipe or exporter), is rebuilt and replaced, never
trusted. The key is also written into the graph's metadata (``vdsr_cache_key``) and checked on read.
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
from vdsr.io.fileio import atomic_path
from vdsr.nn.model import VDSR, weights_digest

log = logging.getLogger(__name__)

# Part of the cache keys of the quantised graphs and of the recipes' verdicts: bump it when the
# quantisation changes. 2: activation ranges from vdsr.export.activation_ranges (ONNX Runtime's
# MinMax values, within 4e-6 relative, without its calibration session's memory).
INT8_VERSION = 2

# The quantised graphs: how many of the first and the last convolutions each keeps in fp32
# (measured on Set5/Set14 x2-x4, shipped and official weights: docs/cpu_backends.md). The last
# convolutions carry the official weights' x2 error: 3+3 lost at most 0.011 dB on Set5 where
# 3+1 lost 0.044 and 10+1 0.035.
INT8_SPLITS: dict[str, tuple[int, int]] = {"int8": (3, 1), "mixed": (3, 3)}


def cache_dir() -> Path:
    """Where derived models are cached: ``$VDSR_CACHE_DIR``, else ``$XDG_CACHE_HOME/vdsr``."""
    if os.environ.get("VDSR_CACHE_DIR"):
        return Path(os.environ["VDSR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vdsr"


CACHE_KEY_PROP = "vdsr_cache_key"  # graph metadata: the cache key the graph was made for


def _valid_onnx(data: bytes, key: str | None = None) -> bool:
    """Whether ``data`` is a checked ONNX model with our input (and, given ``key``, made for it)."""
    import onnx

    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception:  # protobuf and checker errors have no common base class
        return False
    if key is not None and {p.key: p.value for p in model.metadata_props}.get(CACHE_KEY_PROP) != key:
        return False
    return bool(model.graph.node) and [i.name for i in model.graph.input][:1] == ["input"]


def _with_key(data: bytes, key: str) -> bytes:
    """``data`` with ``key`` in its metadata (the file's name alone does not prove what it holds)."""
    import onnx

    model = onnx.load_from_string(data)
    onnx.helper.set_model_props(model, {CACHE_KEY_PROP: key})
    return bytes(model.SerializeToString())


def graph_cache_path(model: VDSR, kind: str) -> Path:
    """The cache file of ``model``'s ``kind`` graph (``"fp32"``, ``"int8"``): a hash of the recipe
    version, the torch version (the exporter), the config and the weights."""
    import torch as _torch

    key = f"{kind}-v{INT8_VERSION}-{_torch.__version__}-{weights_digest(model)}"
    return cache_dir() / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:32]}.onnx"


def int8_cache_path(model: VDSR) -> Path:
    return graph_cache_path(model, "int8")


def cached_int8_bytes(model: VDSR) -> bytes:
    """The int8 graph for ``model``: from the cache when valid, else calibrated and cached."""
    return _cached(model, "int8")


def cached_graph_bytes(model: VDSR, kind: str) -> bytes:
    """The ``kind`` graph (``"fp32"`` or a key of :data:`INT8_SPLITS`), from the cache when valid."""
    return _cached(model, kind)


def cached_fp32_bytes(model: VDSR) -> bytes:
    """The fp32 graph for ``model``: from the cache when valid, else exported and cached (the
    export costs about a second and imports torch.onnx: a process that upscales one image pays it
    only once per weights)."""
    return _cached(model, "fp32")


def _cached(model: VDSR, kind: str) -> bytes:
    """A derived graph from the cache when it is a valid model, else made, cached and returned.

    A cache that cannot be written is skipped (the result is then just not reused); a damaged
    or stale file (not made for this key) is rebuilt and replaced, never handed to a runtime.
    """
    path = graph_cache_path(model, kind)
    key = path.stem
    try:
        data = path.read_bytes()
        if _valid_onnx(data, key):
            return data
        log.info("cached model %s is damaged or stale; rebuilding it", path)
    except OSError:
        pass
    if kind == "int8":
        log.info("calibrating the int8 model once for these weights (cached in %s)", path.parent)
        data = export.onnx_int8_bytes(model)
    elif kind in INT8_SPLITS:
        log.info("calibrating the %s model once for these weights (cached in %s)", kind, path.parent)
        data = export.onnx_int8_bytes(model, *INT8_SPLITS[kind])
    else:
        data = export.onnx_bytes(model)
    data = _with_key(data, key)
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
    name = "onnxruntime"

    def __init__(self, model: VDSR, threads: int | None = None, kind: str = "fp32") -> None:
        """``kind``: the recipe, ``"fp32"``, ``"int8"`` or ``"mixed"``."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("onnxruntime", "onnxruntime is not installed") from None
        if kind != "fp32" and kind not in INT8_SPLITS:
            raise BackendUnavailable("onnxruntime", f"it runs fp32, int8 and mixed, not {kind}")
        self.precision = kind
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Memory patterns pre-plan one block per tile shape: +160 MB peak for 552² tiles (measured).
        # The arena stays: without it every tile's buffers are fresh pages (1.37x slower).
        options.enable_mem_pattern = False
        if threads:
            options.intra_op_num_threads = threads
        graph = cached_graph_bytes(model, kind)
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out: Any = self.session.run(None, {"input": array})[0]
        return torch.from_numpy(np.asarray(out))
