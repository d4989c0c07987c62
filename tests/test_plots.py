"""vdsr.plots: before/after comparisons (``vdsr upscale --compare``, the demo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import random_rgb, run, write_png


def test_compare_shows_full_resolution_crops(tmp_path: Path, tiny_weights: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Rough edge: --compare drew an 840x460 figure, shrinking a large result to ~400 px."""
    from PIL import Image

    src = write_png(tmp_path / "big.png", random_rgb(300, 400))
    out, compare = tmp_path / "big_x2.png", tmp_path / "compare.png"
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(out), "--compare", str(compare),
                        "--weights", str(tiny_weights)], capsys)
    assert code == 0, err
    sheet = np.asarray(Image.open(compare).convert("RGB"))
    result = np.asarray(Image.open(out))
    assert sheet.shape[0] >= 256 and sheet.shape[1] >= 2 * 256
    # The VDSR panel (second, after a title and a label line) is a 256x256 crop of the written
    # output, pixel for pixel: no resampling.
    panel = sheet[52 : 52 + 256, 280 : 280 + 256]
    windows = np.lib.stride_tricks.sliding_window_view(result, (256, 256, 3))[..., 0, :, :, :]
    first_rows = windows[:, :, 0]  # (tops, lefts, 256, 3)
    tops, lefts = np.nonzero((first_rows == panel[0]).all(axis=(2, 3)))
    assert any(np.array_equal(windows[t, x], panel) for t, x in zip(tops, lefts, strict=True))


def test_crop_goes_where_bicubic_and_vdsr_differ(tmp_path: Path) -> None:
    from vdsr.plots import comparison

    a = np.zeros((400, 500))
    b = a.copy()
    b[300:340, 50:90] = 1.0  # the only difference
    top, left, side, zoom = comparison([("a", a), ("b", b)], tmp_path / "c.png", crop=100)
    assert side == 100 and zoom == 3 and 240 <= top <= 300 and top + 100 >= 340 and left <= 50 and left + 100 >= 90
