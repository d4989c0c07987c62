"""The VDSR network (Kim, Lee & Lee, CVPR 2016): ``d`` 3x3 convolutions and a global residual.

``output = input + body(input)``: the body predicts only the high-frequency residual between
the bicubic-upscaled input and the ground truth, which is what lets a 20-layer plain network
train quickly. Every convolution is 3x3 with zero padding 1, so the output has the input's size
and the receptive field is ``(2 * depth + 1)`` pixels square (41x41 for 20 layers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from vdsr.blocks import Add, build_body
from vdsr.errors import InvalidArgument

BODIES = ("plain", "residual", "dense", "inception")


@dataclass(frozen=True)
class VDSRConfig:
    """Hyper-parameters that fully rebuild a :class:`VDSR`; JSON-able, stored in weights files.

    Attributes:
        depth: number of 3x3 convolutions, input and output layers included (paper: 20).
        width: channels of the hidden layers (paper: 64).
        channels: image channels: 1 for the Y channel (paper), 3 for RGB (the notes' ``c_dim``).
        bias: whether convolutions carry biases (official weights: yes; pytorch-vdsr: no).
        body: architecture of the layers between input and output convolution.
    """

    depth: int = 20
    width: int = 64
    channels: int = 1
    bias: bool = True
    body: str = "plain"

    def __post_init__(self) -> None:
        if self.depth < 2:
            raise InvalidArgument(f"depth must be at least 2, got {self.depth}")
        if self.width < 1 or self.channels < 1:
            raise InvalidArgument("width and channels must be positive")
        if self.body not in BODIES:
            raise InvalidArgument(f"unknown body {self.body!r}; choose from {', '.join(BODIES)}")

    @property
    def receptive_field(self) -> int:
        """Side of the square receptive field in pixels: each 3x3 layer adds 2."""
        return 2 * self.depth + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VDSRConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise InvalidArgument(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


class VDSR(nn.Module):
    """VDSR: ``(N, C, H, W)`` float tensor in [0, 1] -> same shape, the super-resolved image.

    The input is the bicubic-upscaled low-resolution image (Y channel for ``channels=1``, on
    MATLAB's [16/255, 235/255] scale). The output is not clamped; callers clamp for display.
    Attribute names are checkpoint keys: ``input``, ``body.{i}``, ``output``.
    """

    def __init__(self, config: VDSRConfig | None = None) -> None:
        super().__init__()
        self.config = config or VDSRConfig()
        c = self.config
        self.body: nn.Module
        if c.body == "plain":
            self.input = nn.Conv2d(c.channels, c.width, 3, padding=1, bias=c.bias)
            self.body = nn.Sequential(
                *[nn.Conv2d(c.width, c.width, 3, padding=1, bias=c.bias) for _ in range(c.depth - 2)]
            )
            self.output = nn.Conv2d(c.width, c.channels, 3, padding=1, bias=c.bias)
        else:
            self.input, self.body, self.output = build_body(c)
        self.relu = nn.ReLU(inplace=True)
        self.residual = Add()  # the global residual; a module so summaries show the merge
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal init (the paper's), biases zero, and a zero output layer.

        A zero output layer makes the untrained network the identity, so training starts exactly
        at bicubic quality instead of from random noise added to the image.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.output.weight)
        if self.output.bias is not None:
            nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.relu(self.input(x))
        if self.config.body == "plain":
            for conv in self.body.children():
                residual = self.relu(conv(residual))
        else:
            residual = self.body(residual)
        return self.residual(x, self.output(residual))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flops_per_pixel(model: nn.Module) -> int:
    """Multiply-adds x2 of every convolution per output pixel (direct method, stride 1)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += 2 * m.in_channels * m.out_channels * kh * kw // m.groups
    return total
