"""Building blocks from the notes: 1x1 convolutions, the Inception module, add/concat merges,
and the VDSR bodies assembled from them.

* :class:`ConvBN` is the notes' ``Conv2d_BN``: convolution with bias -> ReLU -> BatchNorm, in that
  order (Keras ``Conv2D(activation='relu')`` then ``BatchNormalization``, with Keras's
  ``momentum=0.99``/``epsilon=1e-3``).
* :class:`NotesInception` is the notes' ``Inception(x, nb_filter)``, exactly; :class:`Inception`
  is the general block with every branch width named (torchvision's names).
* :class:`Add` (ResNet, VDSR's global residual: more information per feature dimension) and
  :class:`Concat` (Inception, DenseNet: more feature dimensions), optionally fused back to ``N``
  channels by a 1x1 convolution.

Every body keeps plain VDSR's receptive field (41x41 at depth 20: 18 3x3-equivalents between the
input and output convolutions) and its parameter count within 5%.
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


class ConvBN(nn.Module):
    """The notes' ``Conv2d_BN``: Conv2d (bias, 'same' padding) -> ReLU -> BatchNorm2d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.relu = nn.ReLU(inplace=True)
        # Keras defaults: momentum 0.99 (PyTorch counts the other way: 0.01), epsilon 1e-3.
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.relu(self.conv(x)))


class Add(nn.Module):
    """Element-wise sum of same-shaped feature maps (ResNet / VDSR merge)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) < 2:
            raise InvalidArgument("add needs at least two inputs")
        channels = {int(x.shape[1]) for x in xs}
        if len(channels) != 1 and not torch.jit.is_tracing():
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


class NotesInception(nn.Module):
    """The notes' ``Inception(x, nb_filter)``: four ConvBN branches concatenated on channels.

    ``(N, Cin, H, W) -> (N, 4 * nb_filter, H, W)``. Branches, in the notes' order: 1x1;
    1x1 -> 3x3; 1x1 -> 5x5; 3x3 max-pool (stride 1, same padding) -> 1x1.
    """

    def __init__(self, in_channels: int, nb_filter: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, nb_filter, 1)
        self.branch3x3_1 = ConvBN(in_channels, nb_filter, 1)
        self.branch3x3_2 = ConvBN(nb_filter, nb_filter, 3)
        self.branch5x5_1 = ConvBN(in_channels, nb_filter, 1)
        self.branch5x5_2 = ConvBN(nb_filter, nb_filter, 5)
        self.branch_pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.branch_pool_proj = ConvBN(in_channels, nb_filter, 1)
        self.concat = Concat()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        bp = self.branch_pool_proj(self.branch_pool(x))
        return self.concat(b1, b3, b5, bp)


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


# Branch widths chosen so 9 blocks of 64 channels hold plain VDSR's parameter count (-0.1%).
INCEPTION_WIDTHS = {"ch1x1": 24, "ch3x3red": 64, "ch3x3": 64, "ch5x5red": 48, "ch5x5": 16, "pool_proj": 16}
DENSE_GROWTH = 37  # 6 dense blocks of 3 convs: +1.3% parameters


def build_body(config: object) -> tuple[nn.Conv2d, nn.Module, nn.Conv2d]:
    """``(input conv, body, output conv)`` for ``config.body`` in residual/dense/inception.

    The body's 3x3-equivalent depth is ``depth - 2`` (18 at depth 20), so the receptive field
    stays ``2 * depth + 1``.
    """
    from vdsr.model import VDSRConfig

    assert isinstance(config, VDSRConfig)
    c = config
    inner = c.depth - 2
    first = nn.Conv2d(c.channels, c.width, 3, padding=1, bias=c.bias)
    last = nn.Conv2d(c.width, c.channels, 3, padding=1, bias=c.bias)
    if c.body == "residual":
        if inner % 2:
            raise InvalidArgument(f"residual body needs an even number of inner layers, depth {c.depth}")
        body: nn.Module = nn.Sequential(*[ResidualBlock(c.width, c.bias) for _ in range(inner // 2)])
    elif c.body == "dense":
        if inner % 3:
            raise InvalidArgument(f"dense body needs inner layers divisible by 3, depth {c.depth}")
        growth = max(1, round(DENSE_GROWTH * c.width / 64))
        body = nn.Sequential(*[DenseBlock(c.width, growth, 3, c.bias) for _ in range(inner // 3)])
    elif c.body == "inception":
        if inner % 2:
            raise InvalidArgument(f"inception body needs an even number of inner layers, depth {c.depth}")
        widths = {k: max(1, round(v * c.width / 64)) for k, v in INCEPTION_WIDTHS.items()}
        body = nn.Sequential(*[Inception(c.width, **widths, fuse_to=c.width) for _ in range(inner // 2)])
    else:
        raise InvalidArgument(f"unknown body {c.body!r}; choose from plain, residual, dense, inception")
    return first, body, last
