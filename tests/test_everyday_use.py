"""Issue 18, "Everyday use": each bug's regression test (they failed on the code before the fix)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import random_rgb, run, write_png
from vdsr.cli import main
from vdsr.constants import DEFAULT_TILE


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
    assert random_rgb  # shared helper import kept for the tests below


def test_uncreatable_output_folder_is_one_line(tmp_path: Path, tiny_weights: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 4: ``-o RO/sub`` gave a raw OSError traceback from ``out.mkdir``."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_png(folder / "a.png", random_rgb(8, 8))
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should go")
    code, _, err = run(["upscale", str(folder), "-s", "2", "-o", str(blocker / "sub"),
                        "--weights", str(tiny_weights)], capsys)
    assert code == 1 and err.startswith(f"vdsr: error: {blocker / 'sub'}: cannot create the output folder")
    assert len(err.strip().splitlines()) == 1

    def read_only(*_a: object, **_k: object) -> None:  # as root, chmod cannot make a folder read-only
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, _, err = run(["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "ro" / "sub"),
                        "--weights", str(tiny_weights)], capsys)
    assert code == 1
    assert err.strip() == f"vdsr: error: {tmp_path / 'ro' / 'sub'}: cannot create the output folder (Permission denied)"
    assert not (tmp_path / "ro").exists()


@pytest.mark.parametrize("scale", ["1", "0.5", "abc", "nan", "100", "16.5"])
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


@pytest.mark.subprocess
def test_serve_on_a_port_in_use_is_one_line_and_exit_1(tiny_weights: Path) -> None:
    """Bug 6: uvicorn printed a multi-line log and exited 3; the README promises one line, exit 1."""
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "vdsr", "serve", "--port", str(port),
                               "--weights", str(tiny_weights)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (f"vdsr: error: cannot listen on 127.0.0.1:{port}: address already in use "
                                   "(choose another with --port or --host)")


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


def test_demo_output_folder_is_ignored_by_git() -> None:
    """Rough edge: ``vdsr demo`` writes ``vdsr-demo/`` (its default) in the checkout; git ignores it."""
    import subprocess

    from tests.conftest import ROOT

    proc = subprocess.run(["git", "check-ignore", "-q", "vdsr-demo/compare.png"], cwd=ROOT, timeout=30)
    assert proc.returncode == 0


def test_output_rule_refuses_the_ambiguous_cases(tmp_path: Path, tiny_weights: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Rough edge: ``-o out/x.foo`` and ``-o out/name`` silently made folders for one input, and
    ``-o file.png`` with several inputs made a folder named ``file.png``."""
    src = write_png(tmp_path / "a.png", random_rgb(8, 8))
    write_png(tmp_path / "b.png", random_rgb(8, 8))
    w = ["--weights", str(tiny_weights)]
    cases = [([str(src)], "out/x.foo", "cannot write '.foo' images"),
             ([str(src)], "out/name", "no file extension; name a file"),
             ([str(src), str(tmp_path / "b.png")], "file.png", "several inputs need an output folder")]
    for inputs, target, needle in cases:
        code, _, err = run(["upscale", *inputs, "-s", "2", "-o", str(tmp_path / target), *w], capsys)
        assert code == 1 and needle in err, (target, err)
        assert not (tmp_path / target).exists() and not (tmp_path / "out").exists()
    # The explicit forms work: a trailing '/' is a folder, even for one input or a dotted name.
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", f"{tmp_path / 'out' / 'name'}/", *w], capsys)
    assert code == 0, err
    assert [p.name for p in (tmp_path / "out" / "name").glob("*.png")] == ["a_x2.png"]
    code, _, err = run(["upscale", str(src), str(tmp_path / "b.png"), "-s", "2", "-o",
                        f"{tmp_path / 'set.png'}/", *w], capsys)
    assert code == 0 and (tmp_path / "set.png" / "b_x2.png").is_file()


def test_format_quality_suffix_and_metadata(tmp_path: Path, tiny_weights: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """What users of other upscalers ask for: --format/--quality/--suffix, EXIF/ICC/DPI kept."""
    from PIL import Image

    from tests.conftest import SRGB, photo_with_metadata

    folder = tmp_path / "in"
    folder.mkdir()
    photo_with_metadata(folder / "cam.jpg")
    w = ["--weights", str(tiny_weights)]
    sizes = {}
    for quality in ("30", "95"):
        out = tmp_path / f"q{quality}"
        code, _, err = run(["upscale", str(folder), "-s", "2", "-o", str(out), "--format", "jpg",
                            "--quality", quality, "--suffix=-big", *w], capsys)
        assert code == 0, err
        assert [p.name for p in out.glob("*.jpg")] == ["cam-big.jpg"]
        sizes[quality] = (out / "cam-big.jpg").stat().st_size
        with Image.open(out / "cam-big.jpg") as got:
            assert got.format == "JPEG" and got.size == (24, 40)
            assert got.info.get("icc_profile") == SRGB and got.getexif().get(0x010F) == "TestCam"
            assert got.info["dpi"] == (300, 300)
    assert sizes["30"] < sizes["95"]
    code, _, err = run(["upscale", str(folder / "cam.jpg"), "-s", "2", "-o", str(tmp_path / "x.png"),
                        "--format", "webp", *w], capsys)
    assert code == 1 and "does not match" in err
    for bad in (["--quality", "0"], ["--quality", "101"], ["--format", "gif"]):
        with pytest.raises(SystemExit) as exc:
            main(["upscale", "a.png", "-s", "2", "-o", "o/", *bad])
        assert exc.value.code == 2
    capsys.readouterr()


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


def test_demo_title_has_no_internal_run_names(tmp_path: Path, tiny_weights: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Rough edge: the demo's title showed 'trained by `vdsr train` (run2), step 30000'."""
    import vdsr.demo

    titles: list[str] = []
    monkeypatch.setattr(vdsr.demo, "comparison", lambda *a, **k: titles.append(k["title"]))
    vdsr.demo.run_demo(tmp_path / "d", scale=3, weights=str(tiny_weights))
    assert titles == ["chelsea x3: Y-PSNR against the original; model: tiny.safetensors"]


def test_upscale_keeps_16bit_colour_tiff(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rough edge: 16-bit RGB was silently written with 8 bits; a .tif output keeps 16."""
    import tifffile

    src = tmp_path / "deep.tif"
    tifffile.imwrite(src, (random_rgb(12, 14).astype(np.uint16) * 257 + 100), photometric="rgb")
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "out.tif"),
                        "--weights", str(tiny_weights)], capsys)
    assert code == 0 and err == ""
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.dtype == np.uint16 and out.shape == (24, 28, 3)
    assert len(np.unique(out % 257)) > 1  # values between the 8-bit steps: real 16-bit data
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "out.png"),
                        "--weights", str(tiny_weights)], capsys)
    assert code == 0 and "16-bit colour is written with 8 bits per channel" in err


def test_int8_first_use_says_it_is_calibrating(tmp_path: Path, tiny_weights: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Rough edge: the int8 backend's first-use calibration took seconds without a word."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("VDSR_CACHE_DIR", str(tmp_path / "cache"))
    src = write_png(tmp_path / "a.png", random_rgb(12, 12))
    argv = ["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.png"), "--backend", "int8",
            "--weights", str(tiny_weights), "--overwrite"]
    code, _, err = run(argv, capsys)
    assert code == 0 and "vdsr: calibrating the int8 model once for these weights" in err
    code, _, err = run(argv, capsys)
    assert code == 0 and "calibrating" not in err  # cached: nothing to say
