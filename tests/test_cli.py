"""vdsr.cli: the command line end to end on tiny inputs: each subcommand, help and usage errors
(exit 2), progress and summaries, and every error as one line with exit 1."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import check_one_line_error, random_rgb, run, write_png
from vdsr.cli import main
from vdsr.constants import DEFAULT_TILE
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


@pytest.mark.subprocess
def test_import_vdsr_and_cli_parser_do_not_import_torch() -> None:
    code = ("import sys, vdsr, vdsr.cli; vdsr.cli.build_parser(); "
            "print('torch' in sys.modules, vdsr.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "False"


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


# -- help, usage errors, scales and limits ---------------------------------------------------------

def test_help_has_descriptions_examples_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """Rough edge: no examples or descriptions, flags without help or shown defaults, --tile
    differing between upscale and evaluate, and 'the notes' in user-facing text."""
    import argparse

    from vdsr.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help, f"vdsr {name} {action.option_strings or action.dest}: no help"
        text = sub.format_help()
        assert "the notes" not in text, name
        assert "(default: None)" not in text and "(default: False)" not in text
    for name in ("upscale", "train", "prepare", "evaluate", "serve", "convert"):
        assert "examples:\n  vdsr " + name in commands[name].format_help(), name
    assert "--tile TILE" in commands["upscale"].format_help()
    tiles = {commands[n].parse_args(["--data", "d"] if n == "evaluate" else ["a", "-s", "2", "-o", "b"]).tile
             for n in ("upscale", "evaluate")}
    assert tiles == {DEFAULT_TILE}
    assert "(default: 64000000)" in commands["upscale"].format_help().replace("\n", " ").replace("  ", " ")
    assert "examples:" in parser.format_help()


@pytest.mark.parametrize("scale", ["1", "0.5", "-3", "abc", "nan", "inf", "100", "16.5"])
def test_every_bad_scale_is_a_usage_error(scale: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Bug 7: ``-s 100`` exited 1 (a run-time error) where ``-s 1/0.5/abc`` exit 2 (usage)."""
    with pytest.raises(SystemExit) as exc:
        main(["upscale", "x.png", "-s", scale, "-o", "y.png"])
    assert exc.value.code == 2
    assert "argument --scale/-s" in capsys.readouterr().err


def test_scale_cap_is_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Bug 7: the 16x cap was not in ``--help``."""
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    assert "S <= 16" in " ".join(capsys.readouterr().out.split())


def test_absurd_scale_and_small_tile(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_png(tmp_path / "a.png", random_rgb(10, 10))
    with pytest.raises(SystemExit) as exc:  # a usage error, like -s 1 (issue 18, bug 7)
        main(["upscale", str(src), "-s", "1000", "-o", str(tmp_path / "o.png"), "--weights", str(tiny_weights)])
    assert exc.value.code == 2 and "too large (at most 16)" in capsys.readouterr().err
    code = main(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.png"), "--weights", str(tiny_weights),
                 "--tile", "5"])
    check_one_line_error(capsys, code, "smaller than the receptive field (9x9)")
    assert not (tmp_path / "o.png").exists()


def test_output_pixels_are_limited_before_any_work(tmp_path: Path, tiny_weights: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 3: the output (input x scale²) has its own limit, checked before upscaling."""
    import vdsr.cli

    src = write_png(tmp_path / "grey.png", np.full((100, 50), 128, np.uint8))
    out = tmp_path / "o.png"

    def no_work(*_a: object, **_k: object) -> None:
        raise AssertionError("upscaled although the output is over the limit")

    import vdsr.api

    entry = "upscale_image"  # the CLI's one call into the library
    monkeypatch.setattr(vdsr.api, entry, no_work)
    code, _, err = run(["upscale", str(src), "-s", "4", "-o", str(out), "--weights", str(tiny_weights),
                        "--max-output-pixels", "79999"], capsys)
    assert code == 1 and not out.exists()
    assert err.strip() == (f"vdsr: error: {src}: output of 200x400 = 80,000 pixels is over the limit "
                           "of 79,999 (raise it with --max-output-pixels)")
    assert vdsr.cli.build_parser().parse_args(["upscale", "a", "-s", "2", "-o", "b"]).max_output_pixels \
        == 256_000_000  # vdsr.constants.DEFAULT_MAX_OUTPUT_PIXELS
    monkeypatch.undo()
    code, _, err = run(["upscale", str(src), "-s", "4", "-o", str(out), "--weights", str(tiny_weights),
                        "--max-output-pixels", "80000"], capsys)
    assert code == 0, err
    assert out.exists() and Image.open(out).size == (200, 400)


# -- progress and summaries ------------------------------------------------------------------------

class _Terminal:
    """A stderr that says it is a terminal, keeping what is written."""

    def __init__(self) -> None:
        import io

        self.buffer = io.StringIO()

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return self.buffer.write(text)

    def flush(self) -> None:
        pass


def test_progress_on_a_terminal_and_quiet_in_a_pipe(tmp_path: Path, tiny_weights: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Rough edge: ``vdsr upscale`` showed no progress, and folders printed no summary (now
    'done N, skipped S, failed F, in T s', issue 25)."""
    import sys

    folder = tmp_path / "in"
    folder.mkdir()
    write_png(folder / "a.png", random_rgb(8, 10))
    write_png(folder / "b.png", random_rgb(8, 8))
    w = ["--weights", str(tiny_weights)]
    code, out, err = run(["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "o"), *w], capsys)
    assert code == 0 and err == ""  # piped: nothing but the summary
    assert out.strip().startswith("done 2, skipped 0, failed 0, in ")  # (+ seconds, where, how it ran)
    assert f"s: {tmp_path / 'o'} (" in out
    (folder / "c.png").write_bytes(b"not an image")
    code, out, err = run(["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "o2"), *w], capsys)
    assert code == 1 and out.strip().startswith("done 2, skipped 0, failed 1, in ")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code = main(["upscale", str(folder / "a.png"), "-s", "2", "-o", str(tmp_path / "one.png"), *w])
    assert code == 0
    shown = terminal.buffer.getvalue()
    assert "upscaling" in shown and "a.png 10x8 -> 20x16" in shown and "1/1" in shown


def test_info_is_a_readable_summary(tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rough edge: ``vdsr info`` dumped 152 lines of raw JSON; the JSON is now behind --json."""
    import json

    code, text, _ = run(["info"], capsys)  # the shipped model
    assert code == 0 and len(text.splitlines()) < 25
    assert "20 layers of width 64" in text and "trained for x2, x3, x4" in text
    assert "Set5     x4  31.22/0.8826  (28.43/0.8113)" in text and "{" not in text
    code, text, _ = run(["info", str(tiny_weights)], capsys)
    assert code == 0 and "4 layers of width 8" in text and "source      test" in text
    code, text, _ = run(["info", "--json"], capsys)
    assert json.loads(text)["receptive_field"] == 41


# -- bad inputs: one line from every command that reads images -------------------------------------

COMMANDS = ("upscale", "evaluate", "prepare", "train")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_size_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def truncated(path: Path, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(random_rgb(64, 64)).save(buf, format=fmt)
    data = buf.getvalue()
    return data[: len(data) // 2]


BAD_FILES = {
    "not_image.png": lambda p: b"this is a text file, not an image\n" * 10,
    "zero_byte.png": lambda p: b"",
    "truncated.png": lambda p: truncated(p, "PNG"),
    "truncated.jpg": lambda p: truncated(p, "JPEG"),
    "zero_size.png": lambda p: zero_size_png(),
}
EXPECTED = {
    "not_image.png": "not an image",
    "zero_byte.png": "empty file",
    "truncated.png": "truncated or corrupt",
    "truncated.jpg": "truncated or corrupt",
    "zero_size.png": "",  # Pillow refuses it at open or we do: either message names the file
}


def argv_for(command: str, target: Path, tmp: Path, weights: Path) -> list[str]:
    if command == "upscale":
        return ["upscale", str(target), "-s", "2", "-o", str(tmp / "out.png"), "--weights", str(weights)]
    if command == "evaluate":
        return ["evaluate", "--data", str(target), "--scales", "2", "--weights", str(weights)]
    if command == "prepare":
        return ["prepare", "--data", str(target), "-o", str(tmp / "t.h5"), "--scales", "2"]
    return ["train", "--train-dirs", str(target), "--run-dir", str(tmp / "run"), "--val-dir", "none",
            "--steps", "1", "--depth", "3", "--width", "4", "--scales", "2", "--patch", "21"]


def no_outputs(tmp: Path) -> None:
    leftovers = [p.name for p in tmp.rglob("*") if p.is_file() and (p.suffix in (".h5", ".tmp")
                 or p.name in ("out.png", "checkpoint.pt", "last.safetensors"))]
    assert leftovers == []


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_matrix(command: str, name: str, tmp_path: Path, tiny_weights: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    bad = folder / name
    bad.write_bytes(BAD_FILES[name](bad))
    target = bad if command == "upscale" else folder
    code = main(argv_for(command, target, tmp_path, tiny_weights))
    check_one_line_error(capsys, code, name, EXPECTED[name])
    no_outputs(tmp_path)


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_and_empty_paths(command: str, tmp_path: Path, tiny_weights: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "does not exist"
    code = main(argv_for(command, missing, tmp_path, tiny_weights))
    check_one_line_error(capsys, code, str(missing), "no such file")
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(argv_for(command, empty, tmp_path, tiny_weights))
    check_one_line_error(capsys, code, f"no images found in {empty}")
    no_outputs(tmp_path)


# -- train -----------------------------------------------------------------------------------------

def test_train_cli_errors(tmp_path: Path, train_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--resume", str(tmp_path / "nowhere")])
    assert code == 1 and "not a training run folder" in capsys.readouterr().err
    empty = tmp_path / "e"
    empty.mkdir()
    code = main(["train", "--run-dir", str(tmp_path / "r"), "--train-dirs", str(empty), "--val-dir", "none"])
    assert code == 1 and "no images found" in capsys.readouterr().err
    assert os.environ.get("WORLD_SIZE") in (None, "1")


def test_a_library_note_is_said_once_when_the_root_logger_has_a_handler(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A user saw every note twice after the first int8 calibration ("vdsr: checking ..." and
    "INFO:vdsr.recipes:checking ..."): ONNX Runtime's quantiser logs at the root, which gives the
    root logger a handler, and our notes went to it too. Now the CLI's notes stop at its handler."""
    import logging

    from vdsr.cli.console import library_notes_shown

    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)  # what logging.basicConfig() adds
    handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with library_notes_shown():
            logging.getLogger("vdsr.recipes").info("checking the int8 recipe")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert capsys.readouterr().err.splitlines() == ["vdsr: checking the int8 recipe"]


def test_sigterm_while_planning_a_run_is_one_line_and_143(tmp_path: Path, tiny_weights: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """CI caught it: a SIGTERM that came outside `batch.run` (here while the run is planned; in
    CI, just after the output was renamed) escaped as a StopRequested traceback, exit 1. Now it is
    one line and exit 143, wherever the command is (a real signal, to this process)."""
    import signal

    from vdsr import batch

    src = write_png(tmp_path / "a.png", random_rgb(8, 8))
    planned = batch.plan

    def plan_then_sigterm(*args: object, **kwargs: object) -> object:
        result = planned(*args, **kwargs)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGTERM)  # the command's handler raises StopRequested here
        return result

    monkeypatch.setattr(batch, "plan", plan_then_sigterm)
    code, out, err = run(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.png"), "--weights",
                          str(tiny_weights)], capsys)
    assert code == 143
    assert err.splitlines() == ["vdsr: error: stopped by SIGTERM"]
    assert not (tmp_path / "o.png").exists()
