"""The Inception example of the project's notes, reproduced exactly (Keras semantics).

* :class:`ConvBN` is the notes' ``Conv2d_BN``: convolution with bias -> ReLU -> BatchNorm, in that
  order (Keras ``Conv2D(activation='relu')`` then ``BatchNormalization``, with Keras's
  ``momentum=0.99``/``epsilon=1e-3``).
* :class:`InceptionExample` is the notes' ``Inception(x, nb_filter)``; ``vdsr summary inception``
  prints its Keras-style summary (:mod:`vdsr.nn.summary`).

Teaching material, outside the super-resolution path: nothing in the model or inference imports it.
"""

from __future__ import annotations

import torch
from torch import nn

from vdsr.nn.layers import Concat


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


class InceptionExample(nn.Module):
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


def inception_example_model() -> nn.Module:
    """The notes' Keras model: ``Input(shape=(224, 224, 3))`` -> ``Inception(x, 64)``."""
    return InceptionExample(3, 64)
