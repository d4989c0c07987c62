"""The PyTorch backends: eager (``torch``) and ``torch.compile``d (``compile``), any precision."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch

from vdsr.nn.model import VDSR
from vdsr.precision import torch_dtype


@contextlib.contextmanager
def _tf32(enabled: bool, device: torch.device) -> Iterator[None]:
    """cuDNN TF32 convolutions on or off for the block (PyTorch allows them by default)."""
    if device.type != "cuda":
        yield
        return
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=enabled):
        yield


class TorchBackend:
    """``model`` on ``device`` in ``precision``: ``(N, C, H, W)`` float32 -> same, float32, unclamped.

    In fp16/bf16 the convolutions run in 16 bits, on a 16-bit copy of the weights made once; in
    ``bf16-edge`` the first and the last convolution stay fp32. The input and the global residual
    addition stay fp32 in every recipe (so flat areas keep their exact values).
    A ``channels_last`` input lets oneDNN and cuDNN pick their fastest convolutions (1.27x on CPU,
    eager).
    ``compile=True`` wraps the forward in ``torch.compile`` with dynamic shapes (tiles differ at
    image edges); the first call of each new shape family pays the compile time.
    """

    def __init__(self, model: VDSR, device: torch.device, precision: str, compile: bool = False) -> None:
        self.name = "compile" if compile else "torch"
        self.device = device
        self.precision = precision
        self.dtype = torch_dtype(precision)
        # The caller's model is used as it is (a training run validates its live weights): it is
        # only moved to the device, never switched to eval mode or re-laid-out in memory.
        self.model = model.to(device)
        self._low: VDSR | None = None
        if self.dtype != torch.float32:
            self._low = copy.deepcopy(self.model).eval().to(self.dtype)
        forward: Callable[[torch.Tensor], torch.Tensor] = self._forward
        if compile:
            mode = "max-autotune-no-cudagraphs" if device.type == "cuda" else None
            forward = torch.compile(self._forward, dynamic=True, mode=mode)
        self._run = forward

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self._low
        if low is None:
            out: torch.Tensor = self.model(x)
            return out
        if self.precision != "bf16-edge":
            return x + low.predict_residual(x.to(self.dtype)).float()
        features = self.model.relu(self.model.input(x)).to(self.dtype)
        features = low.features(features)
        return x + self.model.output(features.float())

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        with _tf32(self.precision == "tf32", self.device):
            return self._run(x).contiguous()
