"""vdsr.train.data: training images to patch pairs: folders, bicubic degradation, HDF5,
the host and device patch samplers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import _weights_equal, random_rgb, write_png
from vdsr.cli import main
from vdsr.errors import DataError
from vdsr.train import TrainConfig, Trainer
from vdsr.train.data import collect_files, degraded_images


def test_1_empty_folder_reports_no_images(tmp_path: Path) -> None:
    """`nx, ny` were unbound when a folder held no images (UnboundLocalError)."""
    with pytest.raises(DataError, match=f"no images found in {tmp_path}"):
        collect_files([tmp_path])


def test_4_no_blocking_display_in_the_data_path(tmp_path: Path) -> None:
    """`cv2.imshow` + `waitKey(0)` blocked the pipeline; ours never imports a GUI toolkit."""
    write_png(tmp_path / "a.png", random_rgb(50, 50))
    pieces = list(degraded_images(collect_files([tmp_path]), [2, 3], patch=21))
    assert len(pieces) == 2
    assert "cv2" not in sys.modules


def test_reads_pytorch_vdsr_and_notes_layouts_and_rejects_bad(tmp_path: Path) -> None:
    import h5py

    from vdsr.train.data import H5Patches

    p = tmp_path / "pv.h5"
    with h5py.File(p, "w") as f:
        f["data"] = np.random.rand(10, 1, 41, 41).astype(np.float32)
        f["label"] = np.random.rand(10, 1, 41, 41).astype(np.float32)
    x, y = H5Patches(p).batch(4)
    assert x.shape == (4, 1, 41, 41)
    p2 = tmp_path / "notes.h5"
    with h5py.File(p2, "w") as f:
        f["input"] = np.random.rand(6, 41, 41, 3).astype(np.float32)
        f["label"] = np.random.rand(6, 41, 41, 3).astype(np.float32)
    x, _ = H5Patches(p2).batch(2)
    assert x.shape == (2, 3, 41, 41)
    cases = {
        "keys": {"foo": np.zeros((2, 1, 4, 4), np.float32)},
        "shape": {"input": np.zeros((2, 4, 4), np.float32), "label": np.zeros((2, 4, 4), np.float32)},
        "dtype": {"input": np.zeros((2, 1, 4, 4), np.uint8), "label": np.zeros((2, 1, 4, 4), np.uint8)},
        "mismatch": {"input": np.zeros((2, 1, 4, 4), np.float32), "label": np.zeros((3, 1, 4, 4), np.float32)},
    }
    for name, content in cases.items():
        bad = tmp_path / f"{name}.h5"
        with h5py.File(bad, "w") as f:
            for k, v in content.items():
                f[k] = v
        with pytest.raises(DataError, match=f"{name}.h5"):
            H5Patches(bad)
    noth5 = tmp_path / "x.h5"
    noth5.write_bytes(b"nope")
    with pytest.raises(DataError, match="not an HDF5 file"):
        H5Patches(noth5)


def test_prepare_hdf5_and_train_from_it(tmp_path: Path, train_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import h5py

    h5 = tmp_path / "train.h5"
    assert main(["prepare", "--data", str(train_dir), "-o", str(h5), "--scales", "2", "3",
                 "--patch", "21", "--stride", "21", "--downscales", "1.0", "0.7"]) == 0
    with h5py.File(h5) as f:
        n = f["input"].shape[0]
        assert f["input"].shape[1:] == (1, 21, 21) and f["label"].shape == f["input"].shape
        assert f["input"].chunks is not None and n > 0 and n % 8 == 0  # 4 rotations x 2 flips
        assert not np.array_equal(f["input"][0], f["label"][0])
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--h5", str(h5), "--val-dir", "none", "--depth", "3",
                 "--width", "4", "--batch-size", "4", "--steps", "3", "--patch", "21", "--scales", "2", "3",
                 "--threads", "1"]) == 0
    assert (run / "last.safetensors").exists()
    capsys.readouterr()


def test_patch_sources_declare_device_cutting_and_share_the_tensor_feed(tmp_path: Path) -> None:
    """PatchSource: the trainer asks ``cuts_on_device`` (not ``hasattr``); a source that cannot
    cut on the device still serves ``batch_tensors`` by copying its host batch."""
    import h5py

    from vdsr.train.data import H5Patches, PatchSampler

    assert PatchSampler.cuts_on_device and not H5Patches.cuts_on_device
    p = tmp_path / "p.h5"
    with h5py.File(p, "w") as f:
        f["input"] = np.random.rand(10, 1, 21, 21).astype(np.float32)
        f["label"] = np.random.rand(10, 1, 21, 21).astype(np.float32)
    a, b = H5Patches(p, seed=2), H5Patches(p, seed=2)
    x, y = a.batch(6, slice(1, 4))
    xt, yt = b.batch_tensors(6, slice(1, 4), torch.device("cpu"))
    assert np.array_equal(x, xt.numpy()) and np.array_equal(y, yt.numpy()) and a.state == b.state
    cfg = TrainConfig(run_dir=str(tmp_path / "r"), h5=str(p), depth=3, width=4, patch=21,
                      batch_size=4, steps=2, val_dir=None, scales=[2], threads=1)
    trainer = Trainer(cfg)
    assert isinstance(trainer.sampler, H5Patches) and not trainer.device_feed
    trainer.device_feed = True  # what a GPU run would ask of it: the copied host batch
    trainer.fit()
    assert (tmp_path / "r" / "last.safetensors").exists()


def test_device_sampler_cuts_the_same_patches(train_dir: Path) -> None:
    """`batch_tensors` (the GPU feed) draws and cuts exactly what `batch` does."""
    from vdsr.train.data import PatchSampler, collect_files, degraded_images

    for channels in (1, 3):
        images = list(degraded_images(collect_files([train_dir]), [2, 3], channels, [1.0, 0.7], 21))
        a, b = PatchSampler(images, 21, seed=4), PatchSampler(images, 21, seed=4)
        for part in (None, slice(2, 7), None):
            x, y = a.batch(9, part)
            xt, yt = b.batch_tensors(9, part, torch.device("cpu"))
            assert np.array_equal(x, xt.numpy()) and np.array_equal(y, yt.numpy())
        assert a.state == b.state
    # The whole run fed either way ends at the same weights.
    cfg = dict(depth=3, width=4, patch=21, batch_size=4, steps=6, val_dir=None, scales=[2, 3],
               downscales=[1.0], train_dirs=[str(train_dir)], threads=1, seed=1)
    host = Trainer(TrainConfig(run_dir=str(train_dir / "host"), **cfg))
    fed = Trainer(TrainConfig(run_dir=str(train_dir / "fed"), **cfg))
    assert not fed.device_feed  # CPU default: the host loop
    fed.device_feed = True
    host.fit()
    fed.fit()
    assert _weights_equal(train_dir / "host" / "last.safetensors", train_dir / "fed" / "last.safetensors") == 0.0
