"""vdsr.importers: published VDSR weights (MatConvNet ``.mat``, pytorch-vdsr ``.pth``) and
training checkpoints into our ``.safetensors``, safely: no code runs from a pickle, crafted
files are one clear error, and ``vdsr convert`` says which file and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import check_one_line_error, random_rgb, run, write_png
from vdsr.cli import main


def test_training_checkpoint_advice_works(tmp_path: Path, tiny_weights: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Bug 5: ``--weights checkpoint.pt`` advised ``vdsr convert … checkpoint.pt``, which refused it."""
    from safetensors.torch import load_file

    from vdsr.weights import read_metadata

    hr = tmp_path / "hr"
    hr.mkdir()
    for i in range(2):
        write_png(hr / f"{i}.png", random_rgb(48, 48, seed=i))
    run_dir = tmp_path / "run"
    code, _, err = run(["train", "--run-dir", str(run_dir), "--train-dirs", str(hr), "--val-dir", "none",
                        "--depth", "4", "--width", "8", "--batch-size", "4", "--steps", "3", "--patch", "21",
                        "--downscales", "1.0", "--checkpoint-every", "3", "--threads", "1", "--scales", "2", "3"],
                       capsys)
    assert code == 0, err
    checkpoint = run_dir / "checkpoint.pt"
    src = write_png(tmp_path / "a.png", random_rgb(10, 10))
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.png"), "--weights", str(checkpoint)],
                       capsys)
    assert code == 1
    advice = err.split("`")[1]  # the command the error line suggests
    assert advice.startswith("vdsr convert ")
    converted = tmp_path / "checkpoint.safetensors"
    code, out, err = run(advice.split()[1:-1] + [str(converted)], capsys)
    assert code == 0, err
    meta = read_metadata(converted)
    assert (meta.config.depth, meta.config.width, meta.scales) == (4, 8, [2, 3])
    assert "step 3" in meta.source
    last = load_file(str(run_dir / "last.safetensors"))  # the same step's model
    got = load_file(str(converted))
    assert got.keys() == last.keys() and all(bool((got[k] == last[k]).all()) for k in got)
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.png"), "--weights", str(converted)],
                       capsys)
    assert code == 0, err


def test_convert_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, data in (("zero.mat", b""), ("junk.mat", b"junk" * 100), ("junk.pth", b"junk" * 100),
                       ("x.onnx", b"x")):
        src = tmp_path / name
        src.write_bytes(data)
        code = main(["convert", str(src), "-o", str(tmp_path / "o.safetensors")])
        check_one_line_error(capsys, code, name)
    code = main(["convert", str(tmp_path / "nope.mat"), "-o", str(tmp_path / "o.safetensors")])
    check_one_line_error(capsys, code, "nope.mat", "no such")
    assert not (tmp_path / "o.safetensors").exists()
