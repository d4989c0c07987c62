"""vdsr.nn.layers and vdsr.nn.inception_example: 1x1 convolutions and projections, merges, Inception
blocks, and the notes' Conv-BN block."""

from __future__ import annotations

import pytest
import torch

from vdsr.errors import InvalidArgument
from vdsr.nn.inception_example import ConvBN, InceptionExample
from vdsr.nn.layers import Add, Concat, Inception, Projection, conv1x1


def test_conv_bn_order_and_projection() -> None:
    block = ConvBN(3, 8, 3)
    assert [type(m).__name__ for m in block.children()] == ["Conv2d", "ReLU", "BatchNorm2d"]
    assert block.conv.bias is not None
    x = torch.rand(2, 3, 9, 9)
    assert block(x).shape == (2, 8, 9, 9)
    assert conv1x1(16, 4)(torch.rand(1, 16, 5, 5)).shape == (1, 4, 5, 5)  # shrink
    assert Projection(4, 32)(torch.rand(1, 4, 5, 5)).shape == (1, 32, 5, 5)  # grow


def test_general_inception_widths() -> None:
    block = Inception(32, ch1x1=8, ch3x3red=4, ch3x3=16, ch5x5red=4, ch5x5=8, pool_proj=8)
    assert block(torch.rand(1, 32, 10, 10)).shape == (1, 40, 10, 10)
    fused = Inception(32, 8, 4, 16, 4, 8, 8, fuse_to=32)
    assert fused(torch.rand(1, 32, 10, 10)).shape == (1, 32, 10, 10)
    assert InceptionExample(3, 16)(torch.rand(2, 3, 12, 12)).shape == (2, 64, 12, 12)


def test_merges() -> None:
    a, b = torch.rand(1, 8, 4, 4), torch.rand(1, 8, 4, 4)
    assert torch.equal(Add()(a, b), a + b)
    with pytest.raises(InvalidArgument, match="equal channels"):
        Add()(a, torch.rand(1, 4, 4, 4))
    assert Concat()(a, b).shape == (1, 16, 4, 4)
    assert Concat(16, fuse_to=8)(a, b).shape == (1, 8, 4, 4)
