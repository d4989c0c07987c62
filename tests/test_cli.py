"""The command line: each subcommand end to end on tiny inputs, errors as one line and exit 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import DATASETS, needs_shared, random_rgb, run, write_png
from vdsr.cli import main
from vdsr.weights import load_weights


def test_upscale_file_and_folder(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_png(tmp_path / "in put é.png", random_rgb(20, 30))
    out = tmp_path / "out.png"
    code, _, err = run(["upscale", str(src), "-s", "3", "-o", str(out), "--weights", str(tiny_weights)], capsys)
    assert code == 0, err
    assert Image.open(out).size == (90, 60)
    # Existing output is refused without --overwrite, and left untouched.
    before = out.read_bytes()
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(out), "--weights", str(tiny_weights)], capsys)
    assert code == 1 and "already exists" in err and out.read_bytes() == before
    code, _, _ = run(["upscale", str(src), "-s", "2", "-o", str(out), "--weights", str(tiny_weights), "--overwrite"], capsys)
    assert code == 0 and Image.open(out).size == (60, 40)
    # A folder in, a folder out.
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"{i}.png", random_rgb(8 + i, 9))
    outdir = tmp_path / "outdir"
    code, _, err = run(["upscale", str(folder), "-s", "2", "-o", str(outdir), "--weights", str(tiny_weights)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in outdir.iterdir()) == ["0_x2.png", "1_x2.png", "2_x2.png", "vdsr-manifest.jsonl"]


def test_upscale_keeps_going_past_bad_files(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_png(folder / "a.png", random_rgb(8, 8))
    (folder / "b.png").write_bytes(b"not an image at all")
    write_png(folder / "c.png", random_rgb(8, 8))
    outdir = tmp_path / "o"
    code, _, err = run(["upscale", str(folder), "-s", "2", "-o", str(outdir), "--weights", str(tiny_weights)], capsys)
    assert code == 1
    assert "1 of 3 images failed" in err and "b.png: not an image" in err
    assert sorted(p.name for p in outdir.glob("*.png")) == ["a_x2.png", "c_x2.png"]


def test_empty_folder_is_the_notes_crash_fixed(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(["upscale", str(empty), "-s", "2", "-o", str(tmp_path / "o"), "--weights", str(tiny_weights)], capsys)
    assert code == 1 and err.strip() == f"vdsr: error: no images found in {empty}"
    code, _, err = run(["evaluate", "--data", str(empty), "--weights", str(tiny_weights)], capsys)
    assert code == 1 and f"no images found in {empty}" in err
    code, _, err = run(["prepare", "--data", str(empty), "-o", str(tmp_path / "t.h5")], capsys)
    assert code == 1 and f"no images found in {empty}" in err


def test_evaluate_json(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "Mini"
    folder.mkdir()
    for i in range(2):
        write_png(folder / f"{i}.png", random_rgb(48, 60, seed=i))
    out = tmp_path / "r.json"
    code, text, err = run(["evaluate", "--data", str(folder), "--scales", "2", "3",
                           "--weights", str(tiny_weights), "--json", str(out)], capsys)
    assert code == 0, err
    assert "Mini" in text and "x3" in text
    body = json.loads(out.read_text())
    assert [(r["dataset"], r["scale"], r["images"]) for r in body["results"]] == [("Mini", 2, 2), ("Mini", 3, 2)]
    assert set(body["results"][0]) == {"dataset", "scale", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "images"}


@needs_shared
def test_evaluate_shows_paper_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text, err = run(["evaluate", "--data", str(DATASETS / "Set5"), "--scales", "4", "--bicubic-only"], capsys)
    assert code == 0, err
    line = next(row for row in text.splitlines() if row.startswith("Set5"))
    assert "28.43/" in line and "28.42/0.8104" in line and "31.35/0.8838" in line


def test_convert_and_info(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text, _ = run(["info", str(tiny_weights), "--json"], capsys)
    assert code == 0 and json.loads(text)["model"]["depth"] == 4
    out = tmp_path / "copy.safetensors"
    code, _, err = run(["convert", str(tiny_weights), "-o", str(out)], capsys)
    assert code == 0, err
    (copied, meta), (original, _) = load_weights(out), load_weights(tiny_weights)
    assert meta.config.depth == 4 and copied.keys() == original.keys()
    assert all(torch.equal(copied[k], original[k]) for k in original)
    before = out.read_bytes()
    code, _, err = run(["convert", str(tmp_path / "nope.mat"), "-o", str(out), "--overwrite"], capsys)
    assert code == 1 and "nope.mat" in err
    assert out.read_bytes() == before  # a failed convert leaves the existing output alone


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["upscale", "x.png", "-s", "1", "-o", "y.png"], ["upscale", "x.png", "-s", "nan", "-o", "y.png"],
                 ["evaluate", "--data", "d", "--scales", "2.5"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


@pytest.mark.subprocess
def test_python_dash_m_and_console_script(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "vdsr", "upscale", str(tmp_path / "missing.png"),
                           "-s", "2", "-o", str(tmp_path / "o.png"), "--weights", str(tmp_path / "w.safetensors")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_no_partial_output_on_failure(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trunc = tmp_path / "t.png"
    data = (write_png(tmp_path / "full.png", random_rgb(64, 64))).read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    out = tmp_path / "o.png"
    code, _, err = run(["upscale", str(trunc), "-s", "2", "-o", str(out), "--weights", str(tiny_weights)], capsys)
    assert code == 1 and "truncated or corrupt" in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert np  # keep import used


def test_outputs_get_normal_permissions(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import stat

    src = write_png(tmp_path / "a.png", random_rgb(8, 8))
    out = tmp_path / "o.png"
    assert main(["upscale", str(src), "-s", "2", "-o", str(out), "--weights", str(tiny_weights)]) == 0
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
    capsys.readouterr()


def test_evaluate_record_stores_results_in_the_weights(tmp_path: Path, tiny_weights: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from safetensors.torch import load_file

    from vdsr.weights import read_metadata

    folder = tmp_path / "Mini"
    folder.mkdir()
    write_png(folder / "0.png", random_rgb(48, 60, seed=0))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(tiny_weights.read_bytes())
    before = load_file(str(weights))
    for scale in ("2", "3", "2"):  # the repeated ×2 replaces its entry, ×3 is kept
        out = tmp_path / f"r{scale}.json"
        code, text, err = run(["evaluate", "--data", str(folder), "--scales", scale, "--weights",
                               str(weights), "--json", str(out), "--record"], capsys)
        assert code == 0, err
        assert "recorded 1 results" in text
    recorded = read_metadata(weights).extra["evaluation"]["rgb8"]
    assert [(r["dataset"], r["scale"]) for r in recorded] == [("Mini", 2), ("Mini", 3)]
    body = json.loads((tmp_path / "r2.json").read_text())
    # each recorded result names how it was run (issue 16: precision recorded with every result)
    assert recorded[0] == {**body["results"][0], **body["run"]}
    assert (recorded[0]["precision"], recorded[0]["backend"]) == ("fp32", "onnxruntime")
    after = load_file(str(weights))
    assert all(torch.equal(before[k], after[k]) for k in before)
    code, _, err = run(["evaluate", "--data", str(folder), "--bicubic-only", "--record"], capsys)
    assert code == 1 and "--bicubic-only" in err


def test_evaluate_ensemble_is_its_own_row_and_cannot_be_recorded(
        tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "Mini"
    folder.mkdir()
    write_png(folder / "0.png", random_rgb(40, 44, seed=3))
    results = {}
    for flag in ([], ["--ensemble"]):
        out = tmp_path / f"r{len(flag)}.json"
        code, text, err = run(["evaluate", "--data", str(folder), "--scales", "2", "--weights",
                               str(tiny_weights), "--json", str(out), *flag], capsys)
        assert code == 0, err
        body = json.loads(out.read_text())
        assert body["run"]["ensemble"] is bool(flag) and body["run"]["precision"] == "fp32"
        results[bool(flag)] = body["results"][0]["psnr"]
    assert results[True] != results[False]
    code, _, err = run(["evaluate", "--data", str(folder), "--scales", "2", "--weights",
                        str(tiny_weights), "--ensemble", "--record"], capsys)
    assert code == 1 and "--record" in err


@pytest.mark.subprocess
@pytest.mark.parametrize("args", [["info", "--json"], ["info"], ["summary", "vdsr"], ["--help"],
                                  ["convert", "--help"]])
def test_a_closed_stdout_ends_quietly(args: list[str]) -> None:
    """Issue 23 item 12: `vdsr info --json | head -c 100` ended in a BrokenPipeError traceback
    (seen failing: "Exception ignored ... BrokenPipeError", exit 120). The reader here is gone
    before the command writes, as `head` is once it has read enough."""
    proc = subprocess.Popen([sys.executable, "-m", "vdsr", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    code = proc.wait(timeout=120)
    assert err == "" and code in (0, 141), (code, err)  # 141: 128 + SIGPIPE, as a shell reports `yes | head`


def test_info_names_the_file_in_its_json_hint(tmp_path: Path, tiny_weights: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Rough edge (issue 23): `vdsr info F` ended with "(everything, as JSON: vdsr info --json)",
    which describes the shipped model, not F (seen failing)."""
    from vdsr.weights import WeightsMetadata, load_weights, save_weights

    code, out, _ = run(["info", str(tiny_weights)], capsys)
    assert code == 0 and out.splitlines()[-1] == f"(everything, as JSON: vdsr info {tiny_weights} --json)"
    code, out, _ = run(["info"], capsys)
    assert code == 0 and out.splitlines()[-1] == "(everything, as JSON: vdsr info --json)"
    # Free-form recipe values of other types are shown, not formatted as numbers.
    state, meta = load_weights(tiny_weights)
    odd = tmp_path / "odd name.safetensors"
    save_weights(odd, state, WeightsMetadata(config=meta.config, recipe={
        "optimizer": "adam", "trained_steps": "many", "train_dirs": [1, "data/T91"]}))
    code, out, err = run(["info", str(odd)], capsys)
    assert code == 0, err
    assert "many steps on T91" in out and out.splitlines()[-1] == f"(everything, as JSON: vdsr info '{odd}' --json)"
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"x")
    code, _, err = run(["info", str(pth)], capsys)
    assert code == 1 and err == (f"vdsr: error: {pth}: only .safetensors weights are loaded; convert it first "
                                 f"with `vdsr convert {pth} -o model.safetensors`\n")


@pytest.mark.parametrize("device", ["foo", "cuda:99", *([] if torch.cuda.is_available() else ["cuda", "cuda:1"])])
def test_a_device_that_is_not_here_is_one_line(device: str, tmp_path: Path, tiny_weights: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23 item 5: `--device cuda` without CUDA (or `foo`) in upscale and evaluate gave
    `AssertionError: Torch not compiled with CUDA enabled` with a traceback."""
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (8, 8)).save(image)
    (tmp_path / "set").mkdir()
    Image.new("RGB", (12, 12)).save(tmp_path / "set" / "a.png")
    for argv in (["upscale", str(image), "-s", "2", "-o", str(tmp_path / "out.png")],
                 ["evaluate", "--data", str(tmp_path / "set"), "--scales", "2"]):
        code = main([*argv, "--weights", str(tiny_weights), "--device", device])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith(f"vdsr: error: device '{device}' cannot be used: ")
        assert err.count("\n") == 1, err
    assert not (tmp_path / "out.png").exists()
