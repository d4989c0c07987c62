"""Generic layers: 1x1 convolutions, merges (add / concat), Inception, residual and dense blocks.

Nothing here knows a model's configuration (as timm keeps ``layers/`` apart from ``models/``):
:mod:`vdsr.nn.model` assembles VDSR's bodies from these blocks.

* :func:`conv1x1` / :class:`Projection`: mix channels per pixel; shrink, keep or grow them.
* :class:`Add` (ResNet, VDSR's global residual: more information per feature dimension) and
  :class:`Concat` (Inception, DenseNet: more feature dimensions), optionally fused back to ``N``
  channels by a 1x1 convolution.
* :class:`Inception`: every branch width named (torchvision's names), no BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from vdsr.errors import InvalidArgument


def conv1x1(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    """A 1x1 convolution: mixes channels per pixel; shrinks, keeps or grows the channel count."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)


class Projection(nn.Module):
    """1x1 projection block: ``(N, Cin, H, W) -> (N, Cout, H, W)``, 1x1 conv then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, relu: bool = True) -> None:
        super().__init__()
        self.conv = conv1x1(in_channels, out_channels)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class Add(nn.Module):
    """Element-wise sum of same-shaped feature maps (ResNet / VDSR merge)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) < 2:
            raise InvalidArgument("add needs at least two inputs")
        if any(x.shape[1] != xs[0].shape[1] for x in xs[1:]):
            raise InvalidArgument(f"add needs inputs with equal channels, got {[x.shape[1] for x in xs]}")
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Concat(nn.Module):
    """Channel concatenation (Inception / DenseNet merge), optionally fused by a 1x1 conv + ReLU.

    ``in_channels`` is needed only with ``fuse_to``: the fusion maps ``sum(in_channels)`` to
    ``fuse_to`` channels.
    """

    def __init__(self, in_channels: int | None = None, fuse_to: int | None = None) -> None:
        super().__init__()
        if fuse_to is not None and in_channels is None:
            raise InvalidArgument("concat with fusion needs the total input channels")
        self.fuse = Projection(in_channels, fuse_to) if fuse_to is not None and in_channels else None

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = torch.cat(xs, dim=1)
        return self.fuse(out) if self.fuse is not None else out


class Inception(nn.Module):
    """General Inception block (no BatchNorm: SR networks avoid it), every branch width named.

    ``(N, in_channels, H, W) -> (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)``, or ``fuse_to``
    channels when given (a 1x1 fusion after the concatenation). Its receptive field grows by 4
    pixels (the 5x5 branch).
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int,
                 ch5x5: int, pool_proj: int, fuse_to: int | None = None) -> None:
        super().__init__()

        def conv(cin: int, cout: int, k: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU(inplace=True))

        self.branch1x1 = conv(in_channels, ch1x1, 1)
        self.branch3x3 = nn.Sequential(conv(in_channels, ch3x3red, 1), conv(ch3x3red, ch3x3, 3))
        self.branch5x5 = nn.Sequential(conv(in_channels, ch5x5red, 1), conv(ch5x5red, ch5x5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv(in_channels, pool_proj, 1))
        self.concat = Concat(ch1x1 + ch3x3 + ch5x5 + pool_proj, fuse_to)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.concat(self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branch_pool(x))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a local add-skip (ResNet style): ``relu(x + conv(relu(conv(x))))``."""

    def __init__(self, width: int, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=bias)
        self.relu = nn.ReLU(inplace=True)
        self.add = Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.add(x, self.conv2(self.relu(self.conv1(x)))))


class DenseBlock(nn.Module):
    """Three 3x3 convolutions, each seeing the concatenation of all earlier features (DenseNet),
    fused back to ``width`` channels by a 1x1 convolution."""

    def __init__(self, width: int, growth: int, layers: int = 3, bias: bool = True) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(width + i * growth, growth, 3, padding=1, bias=bias) for i in range(layers))
        self.relu = nn.ReLU(inplace=True)
        self.concat = Concat(width + layers * growth, fuse_to=width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs:
            features.append(self.relu(conv(torch.cat(features, dim=1))))
        return self.concat(*features)
