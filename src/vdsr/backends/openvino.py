"""The OpenVINO backend (CPU): fp32, the bf16 recipes on CPUs with native bf16, int8 and mixed.

Optional: ``pip install 'vdsr[openvino]'``. Without the package the backend is
:class:`~vdsr.errors.BackendUnavailable`.

* ``fp32``: the cached fp32 ONNX graph (:func:`vdsr.backends.ort.cached_graph_bytes`), compiled
  with ``INFERENCE_PRECISION_HINT=f32``: equal to ONNX Runtime's fp32 up to summation order.
* ``bf16`` and ``bf16-edge``: a graph built layer by layer from the weights with the precision
  written on every edge (bf16 convolutions between ``Convert`` nodes; the input, the residual
  addition and, for ``bf16-edge``, the first and last convolution in f32), compiled with the f32
  hint, under which OpenVINO runs the graph "as is, with the precisions set on each layer edge".
  OpenVINO's own bf16 hint would also round the residual addition and the image itself to bf16
  (0.15 dB on the official weights, issue 17). Plain bodies only (the paper's); the other bodies
  run these recipes on PyTorch.
* ``int8`` and ``mixed``: the statically quantised QDQ graphs that ONNX Runtime also runs
  (:data:`vdsr.backends.ort.INT8_SPLITS`), 1.1x ONNX Runtime's speed on them with VNNI.

Graphs compile in well under a second; OpenVINO's own blob cache is not used, so there is no
compiled file that could go stale.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from vdsr.backends.ort import cached_graph_bytes
from vdsr.cpu import usable_cpus
from vdsr.errors import BackendUnavailable, InvalidArgument
from vdsr.nn.model import VDSR

__all__ = ["OV_RECIPES", "OpenVinoBackend", "bf16_graph"]

OV_RECIPES = ("fp32", "bf16", "bf16-edge", "int8", "mixed")


def bf16_graph(model: VDSR, edge: bool) -> Any:
    """An ``openvino.Model`` of a plain-body ``model`` whose convolutions run in bf16 (all of
    them, or with ``edge`` the inner ones only); input ``(N, C, H, W)`` f32, dynamic N, H, W."""
    import openvino as ov
    import openvino.opset13 as ops

    if model.config.body != "plain":
        raise InvalidArgument("the OpenVINO bf16 graph is built for the plain body only")
    convs: list[torch.nn.Conv2d] = [model.input, *model.body.children(), model.output]  # type: ignore[list-item]
    x = ops.parameter([-1, model.config.channels, -1, -1], ov.Type.f32, name="input")
    h: Any = x
    current = ov.Type.f32
    for i, conv in enumerate(convs):
        low = not (edge and i in (0, len(convs) - 1))
        want = ov.Type.bf16 if low else ov.Type.f32
        if want != current:
            h, current = ops.convert(h, want), want
        weight: Any = ops.constant(conv.weight.detach().cpu().float().numpy())
        if low:
            weight = ops.convert(weight, want)
        h = ops.convolution(h, weight, [1, 1], [1, 1], [1, 1], [1, 1])
        if conv.bias is not None:
            bias: Any = ops.constant(conv.bias.detach().cpu().float().numpy().reshape(1, -1, 1, 1))
            h = ops.add(h, ops.convert(bias, want) if low else bias)
        if i < len(convs) - 1:
            h = ops.relu(h)
    if current != ov.Type.f32:
        h = ops.convert(h, ov.Type.f32)
    return ov.Model([ops.add(x, h)], [x], "vdsr")


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

    ``(N, C, H, W)`` float32 tensor -> same shape, float32 CPU tensor; any H and W.

    Args:
        model: the network.
        precision: a recipe of :data:`OV_RECIPES` (checked by :func:`vdsr.backends.pick_runtime`:
            the bf16 recipes need a CPU with native bf16).
        threads: inference threads (None: ``torch.get_num_threads()``, which follows the
            caller's ``torch.set_num_threads``).
    """

    device = torch.device("cpu")
    name = "openvino"

    def __init__(self, model: VDSR, precision: str = "fp32", threads: int | None = None) -> None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise BackendUnavailable("openvino", "openvino is not installed (pip install openvino)") from None
        if precision not in OV_RECIPES:
            raise InvalidArgument(f"the openvino backend runs {', '.join(OV_RECIPES)}, not {precision}")
        self.precision = precision
        self.threads = int(threads or torch.get_num_threads())
        core = _core()
        if precision in ("bf16", "bf16-edge"):
            network = bf16_graph(model, edge=precision == "bf16-edge")
        else:
            network = core.read_model(cached_graph_bytes(model, precision))
        config: dict[str, Any] = {
            # f32: run every layer in the precision its graph says (int8 where quantised, bf16
            # where converted); never let the plugin lower the rest on its own.
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": self.threads,
            # One image at a time, tiles in sequence: latency, not throughput streams.
            "PERFORMANCE_HINT": "LATENCY",
        }
        if self.threads < usable_cpus():
            # Fewer threads than CPUs: the process shares the machine (`--workers`, Ray actors).
            # OpenVINO pins its threads to the first CPUs, so every such process ran on the same
            # core: 2 one-thread workers used 1.08 cores and were 1.6x slower than one process.
            config["ENABLE_CPU_PINNING"] = False
        self.compiled = core.compile_model(network, "CPU", config)
        self._request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        result: Any = self._request.infer({0: array})
        # The request's output buffer is reused by the next call: copy it out.
        return torch.from_numpy(np.array(result[self.compiled.outputs[0]], dtype=np.float32))

