"""The CUDA ``auto`` precision keeps real weights within 0.02 dB of fp32 (docs/precision.md).

Runs the package's own fp16/bf16 torch backend on the CPU (oneDNN accumulates both in fp32, as
cuDNN does) on a crop of Set5's butterfly at x4, the scale where bf16 hurts the official weights
most, for the shipped and the official weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import DATASETS, needs_shared
from vdsr.engine import Upscaler
from vdsr.evaluate import super_resolve_y
from vdsr.images import load_image
from vdsr.metrics import psnr
from vdsr.protocol import make_pair
from vdsr.recipes import CUDA_ORDER
from vdsr.weights import load_model

CROP = 40


@needs_shared
@pytest.mark.slow  # CPU fp16 convolutions are ~40x slower than fp32: ~10 s per weights file
@pytest.mark.parametrize("which", ["shipped", "official"])
def test_cuda_auto_precision_stays_within_002_db_and_beats_bf16(which: str, official_weights: Path) -> None:
    model, _ = load_model(official_weights if which == "official" else None)
    model.eval()
    pixels = load_image(DATASETS / "Set5" / "butterfly.png").floats()[0][:CROP, :CROP]
    gt, bicubic = make_pair(pixels, 4, "rgb8")
    auto = CUDA_ORDER[0]  # the first recipe auto checks on CUDA
    torch.set_num_threads(2)
    out = {p: super_resolve_y(Upscaler(model, backend="torch", precision=p, tile=None), bicubic)
           for p in dict.fromkeys(("fp32", auto, "bf16"))}
    score = {p: psnr(gt, y, border=4) for p, y in out.items()}
    assert abs(score[auto] - score["fp32"]) < 0.02
    # fp16 keeps 3 more mantissa bits than bf16: its error is several times smaller
    err = {p: np.abs(y - out["fp32"]).max() for p, y in out.items()}
    assert 0 < err[auto] < err["bf16"] / 3
