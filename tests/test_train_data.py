"""vdsr.train.data: training images to patch pairs: folders, bicubic degradation, HDF5,
the host and device patch samplers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import random_rgb, write_png
from vdsr.errors import DataError
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
