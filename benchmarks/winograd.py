"""Probe: one VDSR layer (64→64, 3×3) by Winograd F(4×4, 3×3) built from stock PyTorch ops.

    python benchmarks/winograd.py [--size 256] [--repeats 10]

Winograd's F(4×4, 3×3) needs 36 multiplications per 4×4 output tile and channel pair instead of
144, so its GEMM part has 4× fewer FLOPs than the direct convolution. Without a fused kernel the
transforms must be written with stock ops: the input transform as an unfold into 6×6 tiles
(stride 4) and one 36×36 GEMM, the products as 36 batched 64×64 GEMMs, the output transform as
one 16×36 GEMM and a permute back into the image. This script checks that such a
layer equals ``F.conv2d`` (to ~1e-5) and times both, stage by stage, on one CPU.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import median_time

# Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016), F(4, 3).
BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
                  dtype=torch.float64)
G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                   [0, 1, -1, 8, -8, 1]], dtype=torch.float64)


class WinogradConv:
    """A 3×3, stride-1, padding-1 convolution computed as Winograd F(4×4, 3×3)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        co, ci = weight.shape[:2]
        self.u = torch.einsum("iu,ocuv,jv->ijoc", G, weight.double(), G).reshape(36, co, ci)
        self.u = self.u.float().contiguous()
        self.bias = bias.view(-1, 1, 1)
        self.k_in = torch.einsum("iu,jv->ijuv", BT, BT).reshape(36, 36).float()
        self.k_out = torch.einsum("pi,qj->pqij", AT, AT).reshape(16, 36).float()

    def stages(self, x: torch.Tensor) -> list[tuple[str, Callable[[], torch.Tensor]]]:
        """The layer (on one ``(C, H, W)`` image) as named stages sharing their results."""
        c, h, w = x.shape
        th, tw = (h + 3) // 4, (w + 3) // 4
        co = self.u.shape[1]
        box: dict[str, torch.Tensor] = {}

        def transform_in() -> torch.Tensor:  # 6x6 tiles with stride 4, then BT d B as one GEMM
            xp = F.pad(x, (1, tw * 4 - w + 1, 1, th * 4 - h + 1))
            tiles = xp.unfold(1, 6, 4).unfold(2, 6, 4)  # (c, th, tw, 6, 6)
            d = tiles.permute(3, 4, 0, 1, 2).reshape(36, c * th * tw)
            box["v"] = (self.k_in @ d).view(36, c, th * tw)
            return box["v"]

        def gemm() -> torch.Tensor:
            box["m"] = torch.bmm(self.u, box["v"])  # (36, co, T)
            return box["m"]

        def transform_out() -> torch.Tensor:  # AT m A as one GEMM, then tiles back to an image
            y = (self.k_out @ box["m"].view(36, co * th * tw)).view(4, 4, co, th, tw)
            y = y.permute(2, 3, 0, 4, 1).reshape(co, th * 4, tw * 4)[:, :h, :w]
            return y + self.bias

        return [("input transform", transform_in), ("36 GEMMs", gemm),
                ("output transform", transform_out)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for _, stage in self.stages(x):
            out = stage()
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    weight, bias = torch.randn(64, 64, 3, 3) * 0.05, torch.randn(64) * 0.1
    x = torch.rand(64, args.size, args.size)
    wino = WinogradConv(weight, bias)
    with torch.inference_mode():
        ref = F.conv2d(x[None], weight, bias, padding=1)[0]
        diff = (wino(x) - ref).abs().max().item()
        direct = median_time(lambda: F.conv2d(x[None], weight, bias, padding=1), args.repeats)[0]
        total = median_time(lambda: wino(x), args.repeats)[0]
        parts = [(name, median_time(fn, args.repeats)[0]) for name, fn in wino.stages(x)]
    flops = 2 * 64 * 64 * 9 * args.size**2
    print(f"layer 64->64 3x3 on {args.size}x{args.size}, {torch.get_num_threads()} threads; "
          f"max |winograd - conv2d| = {diff:.2e}")
    print(f"direct F.conv2d   {direct * 1e3:8.1f} ms  {flops / direct / 1e9:6.1f} GFLOP/s")
    print(f"winograd (total)  {total * 1e3:8.1f} ms  {flops / total / 1e9:6.1f} effective GFLOP/s"
          f"  ({direct / total:.2f}x direct)")
    for name, seconds in parts:
        print(f"  {name:<16}{seconds * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
