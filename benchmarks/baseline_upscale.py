"""The eager fp32 baseline of the CPU benchmark, as a user of pytorch-vdsr would run it.

    python benchmarks/baseline_upscale.py OUT_DIR IMAGE... [--weights FILE]

Whole image, NCHW, fp32, ``torch.no_grad``: for each RGB image, MATLAB YCbCr, bicubic x2 of the
three planes, the network on Y, back to RGB, written as PNG. The same weights and colour path as
``vdsr upscale``, without tiling, backends or memory care.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vdsr.color import rgb2ycbcr, ycbcr2rgb
from vdsr.resize import imresize
from vdsr.sizes import upscaled_size
from vdsr.weights import load_model


def main() -> None:
    args = sys.argv[1:]
    weights = None
    if "--weights" in args:
        i = args.index("--weights")
        weights, args = args[i + 1], args[:i] + args[i + 2:]
    out_dir, images = Path(args[0]), args[1:]
    model, _ = load_model(weights)
    for name in images:
        rgb = np.asarray(Image.open(name).convert("RGB"), dtype=np.float64) / 255.0
        ycbcr = imresize(rgb2ycbcr(rgb), scale=2, size=upscaled_size(*rgb.shape[:2], 2))
        with torch.no_grad():
            y = model(torch.from_numpy(ycbcr[..., 0].astype(np.float32))[None, None])
        ycbcr[..., 0] = y[0, 0].numpy()
        sr = np.clip(np.round(np.clip(ycbcr2rgb(ycbcr), 0, 1) * 255), 0, 255).astype(np.uint8)
        Image.fromarray(sr).save(out_dir / f"{Path(name).stem}_x2.png")


if __name__ == "__main__":
    main()
