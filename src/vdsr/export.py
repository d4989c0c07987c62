"""Exporting a model: ONNX with dynamic height/width, int8-quantised ONNX, TorchScript.

Running these graphs is the job of :mod:`vdsr.backends.ort` (which also caches the int8 graph).

The int8 model is statically quantised (QDQ, per-channel int8 weights, uint8 activations with
min/max calibration) on bicubic-degraded crops of scikit-image's bundled photos. The first three
convolutions, the last one and the global residual addition stay fp32: quantising them cost up to
1 dB (measured, see BENCHMARKS.md).

The activations' ranges are what ONNX Runtime's MinMax calibration measures, but computed here
(:func:`activation_ranges`), one layer at a time in torch, and handed to ``quantize_static``
through its calibration cache. Its own calibration session keeps every activation of a crop
alive at once (its min/max nodes run after the whole network): 330 MB more at the peak of a
first run (benchmarks/first_run.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from vdsr.color import rgb2y
from vdsr.constants import DEFAULT_SCALES
from vdsr.errors import VDSRError
from vdsr.io.fileio import atomic_path
from vdsr.nn.model import VDSR
from vdsr.resize import degrade

# scikit-image's bundled photos used for int8 calibration (not ``chelsea``: `vdsr demo` scores it).
CALIBRATION_IMAGES = ("astronaut", "camera", "coffee", "rocket", "coins", "moon")
CALIBRATION_CROP = 120  # divisible by every scale, so all inputs share one shape
CALIBRATION_SCALES = DEFAULT_SCALES


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


def calibration_inputs(channels: int, crop: int = CALIBRATION_CROP) -> Iterator[NDArray[np.float32]]:
    """Network inputs for int8 calibration: ``(1, C, crop, crop)`` bicubic-degraded crops in [0, 1].

    The centre crop of each bundled photo is degraded at ×2, ×3 and ×4 (MATLAB bicubic down and
    back up, as in training).
    """
    from vdsr.io.images import bundled_photo

    for name in CALIBRATION_IMAGES:
        hr = np.asarray(bundled_photo(name), dtype=np.float64) / 255.0
        if hr.ndim == 2:
            hr = np.repeat(hr[..., None], 3, axis=2)
        h, w = hr.shape[:2]
        top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        hr = hr[top : top + crop, left : left + crop]
        pixels = rgb2y(hr)[..., None] if channels == 1 else hr
        for scale in CALIBRATION_SCALES:
            bic = np.clip(degrade(pixels, scale)[1], 0.0, 1.0)
            yield np.ascontiguousarray(bic.transpose(2, 0, 1)[None], dtype=np.float32)


def activation_ranges(graph: Any, inputs: Iterable[NDArray[np.float32]]) -> dict[str, tuple[NDArray[np.float32],
                                                                                      NDArray[np.float32]]]:
    """The lowest and highest value of every float tensor of ``graph`` (its input and each node's
    output) over ``inputs``: ONNX Runtime's MinMax calibration (non-symmetric, no moving average).

    The graph is run node by node in torch (fp32, the graph's own initializers), each activation
    freed after its last use. Only the operators of the VDSR graphs are known (Conv, Relu, Add,
    and Concat and MaxPool for the dense and Inception bodies); any other is refused, not guessed.
    """
    from onnx import numpy_helper

    inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    last_use = {name: i for i, node in enumerate(graph.node) for name in node.input}
    lowest: dict[str, float] = {}
    highest: dict[str, float] = {}

    def record(name: str, value: torch.Tensor) -> None:
        lo, hi = float(value.min()), float(value.max())
        lowest[name] = min(lo, lowest.get(name, lo))
        highest[name] = max(hi, highest.get(name, hi))

    with torch.no_grad():
        for x in inputs:
            live = {graph.input[0].name: torch.from_numpy(x)}
            record(graph.input[0].name, live[graph.input[0].name])
            for i, node in enumerate(graph.node):
                args = [live[n] if n in live else inits[n] for n in node.input]
                out = _run_node(node, args)
                for name in dict.fromkeys(n for n in node.input if n in live and last_use[n] == i):
                    del live[name]  # once, also for a tensor that the node takes twice
                live[node.output[0]] = out
                record(node.output[0], out)
    return {name: (np.array([lowest[name]], dtype=np.float32), np.array([highest[name]], dtype=np.float32))
            for name in lowest}


def _run_node(node: Any, args: list[torch.Tensor]) -> torch.Tensor:
    """One node of a VDSR graph (every body of :data:`vdsr.constants.BODIES`) in torch."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Relu":
        return torch.relu(args[0])
    if node.op_type == "Add":
        return args[0] + args[1]
    if node.op_type == "Concat":
        return torch.cat(args, dim=int(attrs["axis"]))
    if node.op_type not in ("Conv", "MaxPool"):
        raise VDSRError(f"int8 calibration: the graph has a {node.op_type} node, which it does not know")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:] or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise VDSRError(f"int8 calibration: {node.op_type} {node.name} is padded unevenly")
    stride, dilation = tuple(attrs.get("strides", [1, 1])), tuple(attrs.get("dilations", [1, 1]))
    if node.op_type == "MaxPool":
        if attrs.get("ceil_mode", 0):  # torch and ONNX may place the last window differently
            raise VDSRError(f"int8 calibration: MaxPool {node.name} rounds its output size up (ceil_mode)")
        return torch.nn.functional.max_pool2d(args[0], tuple(attrs["kernel_shape"]), stride, tuple(pads[:2]),
                                              dilation)
    return torch.nn.functional.conv2d(args[0], args[1], args[2] if len(args) > 2 else None, stride=stride,
                                      padding=tuple(pads[:2]), dilation=dilation, groups=attrs.get("group", 1))


def _int8_excluded(graph: Any, keep_first: int = 3, keep_last: int = 1) -> list[str]:
    """Nodes kept in fp32: the first ``keep_first`` and the last ``keep_last`` convolutions and
    the final (residual) node.

    On the official weights, quantising the 2nd and 3rd convolutions cost 0.05–0.65 dB on Set5
    (×2/×4); keeping them in fp32 brought that within 0.05 dB (BENCHMARKS.md). Other splits are
    measured by ``benchmarks/cpu_backends.py`` (docs/cpu_backends.md).
    """
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    tail = convs[len(convs) - keep_last:] if keep_last > 0 else []
    return sorted({*convs[:keep_first], *tail, graph.node[-1].name})


def _inline_shared_initializers(graph: Any) -> None:
    """Replace ``Identity(initializer)`` nodes with their own initializer copy.

    The exporter shares equal tensors (e.g. all-zero biases) through Identity nodes; the quantiser
    only quantises a convolution whose bias is an initializer.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        copy = numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), node.output[0])
        graph.initializer.append(copy)
        graph.node.remove(node)


def onnx_int8_bytes(model: VDSR, keep_first: int = 3, keep_last: int = 1) -> bytes:
    """The model as a statically quantised int8 ONNX graph (same input/output as :func:`onnx_bytes`).

    ``keep_first``/``keep_last``: how many of the first and last convolutions stay fp32.
    """
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            TensorsData,
            quantize_static,
            save_tensors_data,
        )
    except ImportError:
        raise VDSRError("int8 needs onnx and onnxruntime>=1.27 (pip install onnx 'onnxruntime>=1.27')") from None

    fp32 = onnx.load_from_string(onnx_bytes(model))
    _inline_shared_initializers(fp32.graph)
    ranges = TensorsData(CalibrationMethod.MinMax,
                         dict(activation_ranges(fp32.graph, calibration_inputs(model.config.channels))))
    # onnxruntime's quantiser prints its progress and logs advice through the root logger (which
    # Python would show on stderr): keep both off the user's terminal.
    with (tempfile.TemporaryDirectory(prefix="vdsr-int8-") as tmp, warnings.catch_warnings(),
          contextlib.redirect_stdout(io.StringIO()), _logging_disabled()):
        warnings.simplefilter("ignore")
        src, dst, cache = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx", Path(tmp) / "ranges.json"
        onnx.save(fp32, str(src))
        save_tensors_data(ranges, cache)
        quantize_static(
            str(src), str(dst), None, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=_int8_excluded(fp32.graph, keep_first, keep_last),
            calibration_cache_path=cache,
        )
        return dst.read_bytes()


@contextlib.contextmanager
def _logging_disabled() -> Iterator[None]:
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def export_onnx_int8(model: VDSR, path: str | os.PathLike[str]) -> None:
    """Write the int8-quantised ONNX model to ``path`` atomically."""
    data = onnx_int8_bytes(model)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def export_torchscript(model: VDSR, path: str | os.PathLike[str]) -> None:
    """Write a TorchScript (traced) module to ``path`` atomically; ``torch.jit.load`` reads it."""
    model = model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.zeros(1, model.config.channels, 48, 48))
    with atomic_path(path) as tmp:
        traced.save(str(tmp))
