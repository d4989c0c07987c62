"""The OpenVINO backend (CPU): the cached fp32 ONNX graph, compiled by OpenVINO's CPU plugin.

Optional: ``pip install 'vdsr[openvino]'``. Without the package the backend is
:class:`~vdsr.errors.BackendUnavailable`.

Precisions: ``fp32`` (``INFERENCE_PRECISION_HINT=f32``; equal to ONNX Runtime's fp32 up to
summation order) and ``bf16``, allowed only where the CPU has native bf16 dot products
(:func:`vdsr.cpu.cpu_features`): elsewhere OpenVINO emulates it, slower than fp32. bf16 is not
exact: it moved the output by up to 0.016 on the [0, 1] scale (issue 17) and costs more than
0.02 dB on the official weights (docs/cpu_backends.md), so it is never picked by ``auto``.

It also runs the ``int8`` backend's graph (precision ``"int8"``, :func:`vdsr.backends.int8_runtime`):
the same statically quantised QDQ graph as ONNX Runtime's, 1.3x faster than ONNX Runtime on it on
an AVX512_VNNI Xeon (docs/cpu_backends.md).

The graph is compiled in well under a second, from the ONNX graph cached on disk by
:func:`vdsr.backends.ort.cached_fp32_bytes` (validated on every read, rebuilt when damaged);
OpenVINO's own blob cache is not used, so there is no compiled file that could go stale.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from vdsr.backends.ort import INT8_SPLITS, cached_graph_bytes
from vdsr.errors import BackendUnavailable, InvalidArgument
from vdsr.model import VDSR

__all__ = ["OV_PRECISIONS", "OpenVinoBackend", "openvino_available"]

# Our precision names -> OpenVINO's INFERENCE_PRECISION_HINT. "int8" is the int8 backend's QDQ
# graph: its quantised convolutions run in int8 (VNNI), the layers it keeps in fp32 in f32.
OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32", "mixed": "f32"}


def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


_CORE: Any = None
_CORE_LOCK = threading.Lock()


def _core() -> Any:
    """The process's one ``openvino.Core``, made on first use and kept until exit.

    Each Core loads its own CPU plugin, and each plugin swaps the calling thread's signal stack
    (``sigaltstack``) for one of its own, putting the previous one back when it is freed, and
    only if its own is still current. Two Cores freed in the order they were made therefore
    leave the thread on the first one's stack, already unmapped: the next signal that Python
    handles (Ctrl-C, SIGTERM in training) kills the process with SIGSEGV, and faulthandler,
    whose handler runs on that stack too, prints nothing (openvino 2026.4.1;
    docs/openvino_signal_stack.md). One Core that is never freed swaps the stack once (and is
    what OpenVINO recommends: a single Core per application).
    """
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov

            _CORE = ov.Core()
        return _CORE


class OpenVinoBackend:
    """An OpenVINO CPU model for ``model``'s weights as they are when it is built.

    ``(N, C, H, W)`` float32 tensor -> same shape, float32 CPU tensor; any H and W (the graph's
    height and width are dynamic).

    Args:
        model: the network.
        precision: ``"fp32"``, ``"bf16"`` (already resolved: :func:`vdsr.precision.resolve_precision`
            refuses bf16 on CPUs without it) or ``"int8"`` (the int8 backend's cached graph; the
            backend's ``name`` is then ``"int8"``) or ``"mixed"`` (likewise).
        threads: inference threads (None: ``torch.get_num_threads()``, which follows the
            caller's ``torch.set_num_threads``).
        graph: an ONNX graph of ``model`` to compile instead of its cached fp32 one (e.g. the
            int8 QDQ graph of :func:`vdsr.backends.ort.cached_int8_bytes`).
    """

    device = torch.device("cpu")
    runtime = "openvino"

    def __init__(self, model: VDSR, precision: str = "fp32", threads: int | None = None,
                 graph: bytes | None = None) -> None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise BackendUnavailable("openvino", "openvino is not installed (pip install openvino)") from None
        if precision not in OV_PRECISIONS:
            raise InvalidArgument(f"the openvino backend runs {' or '.join(OV_PRECISIONS)}, not {precision}")
        self.name = precision if precision in INT8_SPLITS else "openvino"
        self.precision = precision
        self.threads = int(threads or torch.get_num_threads())
        core = _core()
        if graph is None:
            graph = cached_graph_bytes(model, precision)
        network = core.read_model(graph)
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision],
            "INFERENCE_NUM_THREADS": self.threads,
            # One image at a time, tiles in sequence: latency, not throughput streams.
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = core.compile_model(network, "CPU", config)
        self._request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        result: Any = self._request.infer({0: array})
        # The request's output buffer is reused by the next call: copy it out.
        return torch.from_numpy(np.array(result[self.compiled.outputs[0]], dtype=np.float32))
