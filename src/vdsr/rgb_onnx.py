"""A self-contained RGB-in, RGB-out ONNX model for other tools (chaiNNer, vs-mlrt, TensorRT, ...).

``vdsr export --onnx`` gives the bare network, which expects the caller to do MATLAB's bicubic
upscaling and BT.601 YCbCr. This module puts the whole of ``vdsr upscale`` into one graph:

    RGB (N, 3, H, W) in [0, 1]
      -> YCbCr (MATLAB ``rgb2ycbcr``: Y on [16, 235]/255)          1x1 convolution
      -> MATLAB bicubic upscaling by an integer S of all three planes
         (symmetric borders, S 4-tap polyphase filters per axis)    Slice/Concat, 2 grouped
                                                                     convolutions, DepthToSpace
      -> VDSR on Y, Cb and Cr kept                                   the network's convolutions
      -> RGB (MATLAB ``ycbcr2rgb``), clamped to [0, 1]               1x1 convolution, Clip
    RGB (N, 3, S*H, S*W) in [0, 1]

For an upscaling factor MATLAB's ``imresize(..., 'bicubic')`` does not antialias, so for an
integer S every output pixel is one of S fixed 4-tap filters (one per phase) of the input; the
graph holds them as 5-tap convolution kernels (the union of the phases' tap offsets, unused taps
zero). ONNX's own cubic ``Resize`` is a different filter at the borders and in its coefficient
(``cubic_coeff_a`` -0.75 by default) and is not used. A 3-channel (RGB) model skips the colour
conversions and runs on the upscaled RGB, as ``vdsr upscale`` does.

The graph uses opset 17 and only these operators: Conv, Slice, Concat, DepthToSpace, Relu, Add,
Clip, Cast (fp16 variant), Identity (the exporter shares equal weight tensors through it), the
shape arithmetic of the dynamic borders (Shape, Gather, Unsqueeze, Sub, Constant) and, for the
``inception`` body only, MaxPool; all are supported by TensorRT's ONNX parser and ONNX Runtime.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from vdsr.color import RGB2YCBCR, YCBCR2RGB, YCBCR_OFFSET
from vdsr.constants import MAX_SCALE, __version__
from vdsr.errors import BadScale, InvalidArgument
from vdsr.io.fileio import atomic_path
from vdsr.nn.model import VDSR

OPSET = 17
TAPS = 5  # tap offsets -2..2: every phase's 4 non-zero taps lie among them
PAD = TAPS // 2
INPUT_NAME, OUTPUT_NAME = "input", "output"
IO_CONVENTION = "float32 RGB, (N, 3, H, W) in [0, 1], sRGB values as stored (no linearisation)"


def check_integer_scale(scale: object) -> int:
    """``scale`` as an int in ``[2, MAX_SCALE]``; :class:`BadScale` otherwise (only integer
    factors have a fixed polyphase bicubic filter)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise BadScale(scale, f"scale must be an integer, got {scale!r}")
    if not math.isfinite(float(scale)) or float(scale) != int(scale):
        raise BadScale(scale, f"the RGB ONNX model needs an integer scale, got {scale}")
    if not 2 <= int(scale) <= MAX_SCALE:
        raise BadScale(scale, f"scale must be between 2 and {MAX_SCALE:g}, got {scale}")
    return int(scale)


def phase_filters(scale: int) -> NDArray[np.float64]:
    """MATLAB ``imresize`` upscaling by an integer ``scale`` as ``(scale, TAPS)`` filters, read
    from the package's one bicubic core (:func:`vdsr.resize.axis_weights`).

    Away from the borders output pixel ``S*q + p`` reads input pixels ``q - 2 .. q + 2`` with
    weights that depend on the phase ``p`` alone: filter ``f[p, t]`` weighs ``in[q + t - 2]``.
    """
    from vdsr.resize import axis_weights

    n, q = 16, 8  # an interior sample of a 16-sample axis: no border mirroring reaches it
    weights = axis_weights(n, n * scale, float(scale))
    filters = np.zeros((scale, TAPS), dtype=np.float64)
    for p in range(scale):
        row = scale * q + p
        for index, weight in zip(weights.indices[row], weights.weights[row], strict=True):
            filters[p, int(index) - q + PAD] += weight
    return filters


def output_paths(path: str | os.PathLike[str], scales: list[object]) -> list[tuple[str, int]]:
    """``(path, scale)`` for each requested scale (checked): ``path`` itself for one scale,
    ``NAME_x{S}.onnx`` beside it for several."""
    checked = list(dict.fromkeys(check_integer_scale(s) for s in scales))
    out = Path(path)
    if len(checked) == 1:
        return [(str(out), checked[0])]
    return [(str(out.with_name(f"{out.stem}_x{s}{out.suffix}")), s) for s in checked]


def symmetric_pad(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Pad ``x`` by 2 on both sides of ``dim`` the way MATLAB extends images: mirrored with the
    edge sample repeated (``[x1, x0 | x0 ... xn | xn, xn-1]``), also for sizes 1 and 2.

    Torch's ``reflect`` skips the edge sample and ``replicate`` repeats only it; both differ
    from MATLAB at the two outer rows. Built from slices so the ONNX graph has only Slice and
    Concat: replicate by one first (always at least 3 samples), then mirror one more.
    """
    n = x.shape[dim]
    first, last = x.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1)
    y = torch.cat([first, x, last], dim)  # [x0, x0, x1, ..., xn, xn]
    m = n + 2
    return torch.cat([y.narrow(dim, 2, 1), y, y.narrow(dim, m - 3, 1)], dim)


class MatlabBicubicUp(nn.Module):
    """MATLAB bicubic upscaling by an integer ``scale``: ``(N, C, H, W)`` -> ``(N, C, S*H, S*W)``.

    Float, any range (not clamped). Separable: a ``(5, 1)`` grouped convolution gives the S row
    phases of every channel, a ``(1, 5)`` one the S column phases of each, and depth-to-space
    interleaves the S*S phases (channel ``c*S*S + i*S + j`` -> row phase i, column phase j).
    """

    def __init__(self, scale: int, channels: int = 3) -> None:
        super().__init__()
        self.scale, self.channels = scale, channels
        f = torch.from_numpy(phase_filters(scale)).float()  # (S, TAPS)
        self.register_buffer("rows", f.repeat(channels, 1).reshape(channels * scale, 1, TAPS, 1))
        self.register_buffer("cols", f.repeat(channels * scale, 1).reshape(channels * scale * scale, 1, 1, TAPS))
        self.rows: torch.Tensor
        self.cols: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = symmetric_pad(symmetric_pad(x, 2), 3)
        x = nn.functional.conv2d(x, self.rows, groups=self.channels)  # (N, C*S, H, W + 4)
        x = nn.functional.conv2d(x, self.cols, groups=self.channels * self.scale)  # (N, C*S*S, H, W)
        return nn.functional.pixel_shuffle(x, self.scale)


def _colour_conv(matrix: NDArray[np.floating], bias: NDArray[np.floating]) -> nn.Conv2d:
    conv = nn.Conv2d(3, 3, 1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(matrix).float().reshape(3, 3, 1, 1))
        assert conv.bias is not None
        conv.bias.copy_(torch.from_numpy(bias).float())
    conv.requires_grad_(False)
    return conv


class RGBUpscaler(nn.Module):
    """``vdsr upscale`` as one module: RGB ``(N, 3, H, W)`` float32 in [0, 1] ->
    ``(N, 3, S*H, S*W)`` in [0, 1].

    A 1-channel model runs on the Y of MATLAB's BT.601 YCbCr (Cb and Cr only bicubic-upscaled);
    a 3-channel model on the bicubic-upscaled RGB. ``fp16`` runs the network in half precision
    (the colour conversions and the bicubic filters stay float32, as do input and output).
    """

    def __init__(self, model: VDSR, scale: int, fp16: bool = False) -> None:
        super().__init__()
        self.scale = check_integer_scale(scale)
        self.net = model.eval()
        self.fp16 = fp16
        self.luma = model.config.channels == 1
        if model.config.channels not in (1, 3):
            raise InvalidArgument(f"an RGB model needs a 1- or 3-channel network, not {model.config.channels}")
        self.up = MatlabBicubicUp(self.scale, 3)
        # ycbcr = (M @ rgb + offset) / 255 and rgb = M^-1 @ (255 * ycbcr - offset)
        self.to_ycbcr = _colour_conv(RGB2YCBCR / 255.0, YCBCR_OFFSET / 255.0)
        self.to_rgb = _colour_conv(YCBCR2RGB * 255.0, -(YCBCR2RGB @ YCBCR_OFFSET))

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp16:
            return self.net(x.half()).float()
        return self.net(x)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        if not self.luma:
            return self._network(self.up(rgb)).clamp(0.0, 1.0)
        ycbcr = self.up(self.to_ycbcr(rgb))
        y = self._network(ycbcr[:, :1])
        return self.to_rgb(torch.cat([y, ycbcr[:, 1:]], 1)).clamp(0.0, 1.0)


def rgb_onnx_bytes(model: VDSR, scale: int, fp16: bool = False,
                   metadata: dict[str, Any] | None = None) -> bytes:
    """:class:`RGBUpscaler` as ONNX (opset :data:`OPSET`): input ``input`` float32
    ``(N, 3, H, W)``, output ``output`` float32 ``(N, 3, S*H, S*W)``; N, H and W dynamic.

    ``metadata`` (e.g. the weights file's) is stored with the scale and the I/O convention in
    the model's ``metadata_props`` (keys ``vdsr.*``).
    """
    import onnx

    scale = check_integer_scale(scale)
    # A copy for fp16: half() in place would round the caller's weights for good.
    module = RGBUpscaler(copy.deepcopy(model).half() if fp16 else model, scale, fp16=fp16)
    x = torch.rand(1, 3, 8, 8)  # small: tracing runs fp16 convolutions on the CPU, slowly
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(  # a BytesIO target is accepted at runtime
            module, (x,), buf,  # type: ignore[arg-type]
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=OPSET,
            dynamic_axes={INPUT_NAME: {0: "n", 2: "height", 3: "width"},
                          OUTPUT_NAME: {0: "n", 2: f"{scale}*height", 3: f"{scale}*width"}},
            dynamo=False,
        )
    graph = onnx.load_from_string(buf.getvalue())
    props = {
        "vdsr.version": __version__,
        "vdsr.scale": str(scale),
        "vdsr.model": json.dumps(model.config.to_dict(), sort_keys=True),
        "vdsr.precision": "fp16 network, fp32 input/output" if fp16 else "fp32",
        "vdsr.input": f"'{INPUT_NAME}': {IO_CONVENTION}; H and W at least 1",
        "vdsr.output": f"'{OUTPUT_NAME}': float32 RGB, (N, 3, {scale}*H, {scale}*W) in [0, 1] (clamped)",
        "vdsr.pipeline": ("MATLAB rgb2ycbcr (BT.601, Y on [16,235]/255) -> MATLAB bicubic x"
                          f"{scale} of Y, Cb, Cr -> VDSR on Y -> ycbcr2rgb -> clamp"
                          if model.config.channels == 1 else
                          f"MATLAB bicubic x{scale} of RGB -> VDSR on RGB -> clamp"),
    }
    if metadata:
        props.update({f"vdsr.{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                      for k, v in metadata.items()})
    onnx.helper.set_model_props(graph, props)
    graph.doc_string = (f"VDSR x{scale} super-resolution, RGB in, RGB out: {props['vdsr.input']} -> "
                        f"{props['vdsr.output']}")
    onnx.checker.check_model(graph)
    return bytes(graph.SerializeToString())


def export_rgb_onnx(model: VDSR, path: str | os.PathLike[str], scale: int, fp16: bool = False,
                    metadata: dict[str, Any] | None = None) -> None:
    """Write :func:`rgb_onnx_bytes` to ``path`` atomically."""
    data = rgb_onnx_bytes(model, scale, fp16=fp16, metadata=metadata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
