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

from vdsr.constants import BODIES
from vdsr.errors import InvalidArgument, unknown
from vdsr.nn.layers import Add, DenseBlock, Inception, ResidualBlock

# Branch widths chosen so 9 blocks of 64 channels hold plain VDSR's parameter count (-0.1%).
INCEPTION_WIDTHS = {"ch1x1": 24, "ch3x3red": 64, "ch3x3": 64, "ch5x5red": 48, "ch5x5": 16, "pool_proj": 16}
DENSE_GROWTH = 37  # 6 dense blocks of 3 convs: +1.3% parameters


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
            raise InvalidArgument(unknown("body", self.body, BODIES))

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
        self.input, self.body, self.output = build_body(self.config)
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

    def predict_residual(self, x: torch.Tensor) -> torch.Tensor:
        """The body's prediction ``output - input``: ``(N, C, H, W)`` -> same shape and dtype.

        Reduced-precision inference runs only this part in fp16/bf16 and adds it to the fp32 input.
        """
        out: torch.Tensor = self.output(self.features(self.relu(self.input(x))))
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The body alone: the input layer's activations -> the output layer's input."""
        if self.config.body == "plain":
            for conv in self.body.children():
                x = self.relu(conv(x))
            return x
        out: torch.Tensor = self.body(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x, self.predict_residual(x))


def build_body(c: VDSRConfig) -> tuple[nn.Conv2d, nn.Module, nn.Conv2d]:
    """``(input conv, body, output conv)`` for every body of :data:`BODIES`: the one place they are built.

    The body's 3x3-equivalent depth is ``depth - 2`` (18 at depth 20), so the receptive field stays
    ``2 * depth + 1``. The plain body is the paper's: ``depth - 2`` 3x3 convolutions (each followed
    by ReLU in :meth:`VDSR.predict_residual`). Attribute names are checkpoint keys: never rename.
    """
    inner = c.depth - 2
    first = nn.Conv2d(c.channels, c.width, 3, padding=1, bias=c.bias)
    last = nn.Conv2d(c.width, c.channels, 3, padding=1, bias=c.bias)
    body: nn.Module
    if c.body == "plain":
        body = nn.Sequential(*[nn.Conv2d(c.width, c.width, 3, padding=1, bias=c.bias) for _ in range(inner)])
    elif c.body == "residual":
        if inner % 2:
            raise InvalidArgument(f"residual body needs an even number of inner layers, depth {c.depth}")
        body = nn.Sequential(*[ResidualBlock(c.width, c.bias) for _ in range(inner // 2)])
    elif c.body == "dense":
        if inner % 3:
            raise InvalidArgument(f"dense body needs inner layers divisible by 3, depth {c.depth}")
        growth = max(1, round(DENSE_GROWTH * c.width / 64))
        body = nn.Sequential(*[DenseBlock(c.width, growth, 3, c.bias) for _ in range(inner // 3)])
    else:  # "inception"; VDSRConfig has already refused unknown bodies
        if inner % 2:
            raise InvalidArgument(f"inception body needs an even number of inner layers, depth {c.depth}")
        widths = {k: max(1, round(v * c.width / 64)) for k, v in INCEPTION_WIDTHS.items()}
        body = nn.Sequential(*[Inception(c.width, **widths, fuse_to=c.width) for _ in range(inner // 2)])
    return first, body, last


def weights_digest(model: nn.Module) -> str:
    """A SHA-256 of the model's config and every tensor's name and bytes: what identifies a set of
    weights in caches (derived graphs, recipe verdicts)."""
    import hashlib

    digest = hashlib.sha256(repr(getattr(model, "config", "")).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


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
