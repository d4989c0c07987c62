"""The six bugs of the notes' TensorFlow code, each gone (issue: training, section 3)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import random_rgb, tiny_model, write_png
from vdsr.api import run_network
from vdsr.errors import DataError
from vdsr.images import load_image, save_image
from vdsr.resize import degrade, modcrop
from vdsr.train.data import collect_files, degraded_images


def test_1_empty_folder_reports_no_images(tmp_path: Path) -> None:
    """`nx, ny` were unbound when a folder held no images (UnboundLocalError)."""
    with pytest.raises(DataError, match=f"no images found in {tmp_path}"):
        collect_files([tmp_path])


def test_2_preprocess_returns_input_and_label() -> None:
    """`preprocess` used `label_` before assigning it; ours returns (hr, bicubic) of one size."""
    img = np.random.default_rng(0).random((50, 47))
    hr, bicubic = degrade(img, 3)
    assert hr.shape == bicubic.shape == (48, 45)
    assert np.array_equal(hr, modcrop(img, 3))
    assert not np.allclose(hr, bicubic)


def test_3_modcrop_integer_division() -> None:
    """`modcrop` used `/` (float indices in Python 3)."""
    assert modcrop(np.zeros((41, 43)), 3).shape == (39, 42)


def test_4_no_blocking_display_in_the_data_path(tmp_path: Path) -> None:
    """`cv2.imshow` + `waitKey(0)` blocked the pipeline; ours never imports a GUI toolkit."""
    write_png(tmp_path / "a.png", random_rgb(50, 50))
    pieces = list(degraded_images(collect_files([tmp_path]), [2, 3], patch=21))
    assert len(pieces) == 2
    assert "cv2" not in sys.modules


def test_5_save_writes_the_file_not_the_directory(tmp_path: Path) -> None:
    """`imsave` wrote to the result directory path instead of the file."""
    out = tmp_path / "result" / "result.png"
    out.parent.mkdir()
    save_image(out, np.full((4, 5, 3), 0.5))
    assert out.is_file() and load_image(out).pixels.shape == (4, 5, 3)


def test_6_whole_image_inference_keeps_borders() -> None:
    """Test-time sub-images were merged and borders lost; ours runs the whole image (or exact
    tiles) and returns every pixel."""
    model = tiny_model(depth=5)
    x = np.random.default_rng(0).random((1, 45, 50)).astype(np.float32)
    out = run_network(model, x, tile=None)
    assert out.shape == x.shape
    assert np.abs(out - run_network(model, x, tile=11)).max() < 1e-5
