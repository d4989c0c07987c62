"""Training judged by its results, not its mechanics (issue 29): the patches are on the [0, 1]
scale the network is validated and used on, a fine-tune of the shipped model keeps its Set5
score on both data paths, a small model trained from scratch beats bicubic on images it never
saw, and scripts/gpu_stage.sh in miniature trains at a correct run's loss.

From f30c5f2 until the pixel contract (vdsr.pixels) the training data was raw 0-255 values:
every mechanical test passed (the loss went down from 39 to 30), and 60 fine-tune steps cost the
shipped model 0.98 dB on Set5 x2. Each test here fails on that code. They use only the public
training API (TrainConfig, Trainer, degraded_images, the CLI), which that code had too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATASETS, ROOT, needs_shared, random_rgb
from vdsr.cli import main
from vdsr.engine import Upscaler
from vdsr.evaluate import EvalConfig, evaluate_folder
from vdsr.nn.model import VDSR
from vdsr.train import TrainConfig, Trainer
from vdsr.train.data import H5Patches, PatchSampler, degraded_images
from vdsr.weights import load_model

SHIPPED = ROOT / "src" / "vdsr" / "weights" / "vdsr_x234.safetensors"
# How far a short fine-tune may move the shipped model on Set5 x2 (issue 29's bound). Measured:
# 60 steps keep it within 0.01 dB on both paths; the broken data path lost 0.91-0.98 dB.
FINE_TUNE_DB = 0.05


def set5_x2(model: VDSR, folder: Path = DATASETS / "Set5") -> tuple[float, float]:
    """(model, bicubic) mean Y-PSNR on ``folder`` at x2, exact fp32 (the protocol of Table 3)."""
    up = Upscaler(model.eval(), device="cpu", backend="torch", precision="fp32", tile=None)
    result = evaluate_folder(up, folder, EvalConfig(scales=(2,), ssim=False))[0]
    return result.psnr, result.bicubic_psnr


def training_subset(tmp_path: Path, count: int, start: int = 0) -> Path:
    """``count`` T91 images (links), a folder of its own."""
    folder = tmp_path / "hr"
    folder.mkdir()
    for f in sorted((DATASETS / "T91").iterdir())[start:start + count]:
        (folder / f.name).symlink_to(f)
    return folder


# -- the patches ------------------------------------------------------------------------------------

def _photo_8_and_16(tmp_path: Path) -> tuple[Path, Path]:
    """The same picture as an 8-bit RGB PNG and a 16-bit grey PNG (values x257 of its Y-ish
    grey), so both decode paths are seen."""
    rgb = random_rgb(96, 90, seed=4)
    p8 = tmp_path / "eight.png"
    Image.fromarray(rgb).save(p8)
    grey16 = (rgb.astype(np.uint32).mean(axis=2).round().astype(np.uint16) * 257)
    p16 = tmp_path / "sixteen.png"
    Image.fromarray(grey16).save(p16)
    return p8, p16


def test_patches_of_8_and_16_bit_images_lie_on_the_unit_scale_at_every_downscale(tmp_path: Path) -> None:
    """HR and bicubic patches from an 8-bit and a 16-bit file are on [0, 1] (not 0-255 or
    0-65535), for each extra downscale: the 0.7 and 0.5 copies were clipped to 1.0 everywhere
    (all white) when the pixels came in raw."""
    for path in _photo_8_and_16(tmp_path):
        pieces = list(degraded_images([path], scales=[2, 3], downscales=[1.0, 0.7, 0.5], patch=21))
        assert len(pieces) == 6, path
        for piece in pieces:
            assert 0.0 <= piece.hr.min() and piece.hr.max() <= 1.0, (path, piece.hr.max())
            assert -0.1 <= piece.bicubic.min() and piece.bicubic.max() <= 1.1
            assert piece.hr.std() > 0.05, "a flat (e.g. all-white) training image"
            # the bicubic input is a blurred copy of the target, not another scale of it
            assert np.abs(piece.bicubic - piece.hr).mean() < 0.1


def test_8_and_16_bit_files_of_one_picture_give_the_same_patches(tmp_path: Path) -> None:
    """A 16-bit file is divided by 65535 and an 8-bit one by 255: the same grey picture at both
    depths gives the same Y patches to within 8-bit rounding."""
    rgb = random_rgb(64, 70, seed=2)
    grey8 = rgb[..., 1]
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    (a,), (b,) = (list(degraded_images([tmp_path / name], scales=[2], patch=21))
                  for name in ("g8.png", "g16.png"))
    assert np.abs(a.hr - b.hr).max() < 1e-6 and np.abs(a.bicubic - b.bicubic).max() < 1e-6


def test_prepare_and_the_on_the_fly_sampler_give_the_same_patches(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`vdsr prepare`'s HDF5 patches are the on-the-fly sampler's images cut on a grid: the
    first patch of the file (untransformed) is the top-left patch of the first degraded image,
    every patch of the file lies on [0, 1], and the sampler's device cut equals its host cut."""
    hr = tmp_path / "hr"
    hr.mkdir()
    p8, _ = _photo_8_and_16(hr)
    (hr / "sixteen.png").unlink()
    h5 = tmp_path / "train.h5"
    assert main(["prepare", "--data", str(hr), "-o", str(h5), "--scales", "2", "--patch", "21",
                 "--stride", "21", "--downscales", "1.0"]) == 0
    capsys.readouterr()
    (image,) = degraded_images([p8], scales=[2], patch=21)
    import h5py

    with h5py.File(h5, "r") as f:
        x, y = np.asarray(f["input"]), np.asarray(f["label"])
    assert np.array_equal(x[0], image.bicubic[:, :21, :21]) and np.array_equal(y[0], image.hr[:, :21, :21])
    assert 0.0 <= y.min() and y.max() <= 1.0 and -0.1 <= x.min() and x.max() <= 1.1
    patches = H5Patches(h5)
    bx, by = patches.batch(16)
    patches.close()
    assert 0.0 <= by.min() and by.max() <= 1.0 and by.std() > 0.05 and bx.shape == (16, 1, 21, 21)
    sampler = PatchSampler([image], patch=21, seed=3)
    host = sampler.batch(8)
    sampler.state = PatchSampler([image], patch=21, seed=3).state
    import torch

    device = sampler.batch_tensors(8, None, torch.device("cpu"))
    assert all(np.array_equal(h, d.numpy()) for h, d in zip(host, device, strict=True))


# -- training results -------------------------------------------------------------------------------
# CI budget: the shipped model's own Set5 score is computed once for the module, and training runs
# on one thread: on 2 cores shared with another job, fp32 training steps took 3 s on two threads
# and 1 s on one (OpenMP threads waiting for each other; measured), and CI's machine is shared.

@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one CPU thread inside the block (the thread count is restored after it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shipped_set5() -> float:
    """The shipped model's Set5 x2 Y-PSNR, exact fp32 (37.39 dB, measured)."""
    return set5_x2(load_model(SHIPPED)[0])[0]


@needs_shared
@pytest.mark.slow
def test_a_short_fine_tune_through_prepare_keeps_the_shipped_models_set5_score(
        tmp_path: Path, shipped_set5: float, capsys: pytest.CaptureFixture[str]) -> None:
    """`vdsr prepare` + 30 steps of 8 of `vdsr train --h5 --init-weights <shipped>` at a fine-tune's
    learning rate (2e-5; 16 T91 images) keep Set5 x2 within 0.05 dB, and the loss is that of
    [0, 1] data (about 5e-4; the 0-255 feed gave 30-39 and cost 0.91-0.98 dB in 60 steps). The
    on-the-fly feed is the gpu_stage test's. The default extra downscales (1.0, 0.7, 0.5) are
    used: with 1.0 alone, 60 steps on so few images moved Set5 by 0.09-0.12 dB (measured)."""
    hr = training_subset(tmp_path, 16)
    run, h5 = tmp_path / "run", tmp_path / "train.h5"
    assert main(["prepare", "--data", str(hr), "-o", str(h5), "--scales", "2"]) == 0
    with one_thread():
        assert main(["train", "--run-dir", str(run), "--init-weights", str(SHIPPED), "--val-dir", "none",
                     "--h5", str(h5), "--steps", "30", "--batch-size", "8", "--scales", "2",
                     "--log-every", "10", "--learning-rate", "2e-5", "--checkpoint-every", "30",
                     "--seed", "1", "--device", "cpu", "--precision", "fp32"]) == 0
    capsys.readouterr()
    losses = [float(r.split(",")[1]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert len(losses) == 3 and max(losses) < 0.005, losses
    tuned, bicubic = set5_x2(load_model(run / "last.safetensors")[0])
    assert abs(tuned - shipped_set5) <= FINE_TUNE_DB, (shipped_set5, tuned)
    assert tuned > bicubic + 3.0


@needs_shared
@pytest.mark.slow
def test_a_small_model_trained_from_scratch_beats_bicubic_on_unseen_images(tmp_path: Path) -> None:
    """A 6-layer, 16-channel model, 150 steps of 16 patches on 40 T91 images (about 5 s here),
    scored on Set5 and Set14, which it never saw: measured +1.16 and +0.96 dB over bicubic at x2
    (300 steps of 32: +1.60 and +1.23). The asserted margins (0.8 and 0.6 dB) leave room for other
    CPUs' rounding; the identity model it starts as scores bicubic exactly, and the 0-255 feed
    did not reach it."""
    config = TrainConfig(run_dir=str(tmp_path / "run"), train_dirs=[str(training_subset(tmp_path, 40))],
                         val_dir=None, scales=[2], downscales=[1.0], depth=6, width=16, batch_size=16,
                         steps=150, learning_rate=1e-3, schedule="cosine", log_every=50,
                         checkpoint_every=150, seed=1, device="cpu", precision="fp32")
    trainer = Trainer(config)
    with one_thread():
        trainer.fit()
    for folder, margin in (("Set5", 0.8), ("Set14", 0.6)):
        model_db, bicubic_db = set5_x2(trainer.model, DATASETS / folder)
        assert model_db - bicubic_db >= margin, (folder, model_db, bicubic_db)


@needs_shared
@pytest.mark.slow
@pytest.mark.subprocess
def test_gpu_stage_in_miniature_trains_at_a_correct_runs_loss_and_keeps_set5(tmp_path: Path,
                                                                             shipped_set5: float) -> None:
    """scripts/gpu_stage.sh as the GPU session runs it (a cosine fine-tune of the shipped
    weights on folders, patches cut on the fly, validated on Set5), on the CPU for 30 steps of 8
    at 2e-5 (the stage's 2e-4 is for thousands of steps: 40 of them lost 0.24 dB on 24 images):
    the loss is a [0, 1] run's (below 0.005; the 0-255 feed gave about 30) and the last weights
    keep Set5 x2 within 0.05 dB."""
    out = tmp_path / "out"
    settings = {"OUT": str(out), "DEVICE": "cpu", "STEPS": "30", "BATCH": "8", "WARMUP": "10", "LR": "2e-5",
                "TOTAL": "400", "TRAIN_DIRS": str(training_subset(tmp_path, 16)),
                "VAL_DIR": str(DATASETS / "Set5"), "PYTHON": sys.executable,
                "EXTRA": "--scales 2 --val-every 30 --checkpoint-every 30 --threads 1 --precision fp32"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_stage.sh")], cwd=ROOT,
                          env=os.environ | settings, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "stage.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 30, summary
    assert summary["last_row"]["train_loss"] < 0.005, summary["last_row"]
    assert abs(summary["last"]["val_psnr_x2"] - shipped_set5) <= FINE_TUNE_DB, (shipped_set5, summary["last"])
