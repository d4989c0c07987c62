"""The bad-input matrix: every case gives one clear line naming the file, exit 1, no traceback,
no partial output; the formats that must work, work."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import check_one_line_error, random_rgb, write_png
from vdsr.cli import main
from vdsr.images import load_image

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


def test_decompression_bomb_and_max_pixels(tmp_path: Path, tiny_weights: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # A 20000x20000 greyscale PNG compresses to a few hundred KB but would decode to 400 MP.
    bomb = tmp_path / "bomb.png"
    Image.new("L", (20000, 20000)).save(bomb, optimize=False)
    assert bomb.stat().st_size < 2_000_000
    code = main(["upscale", str(bomb), "-s", "2", "-o", str(tmp_path / "out.png"), "--weights", str(tiny_weights)])
    check_one_line_error(capsys, code, "bomb.png", "over the limit", "--max-pixels")
    small = write_png(tmp_path / "small.png", random_rgb(20, 20))
    code = main(["upscale", str(small), "-s", "2", "-o", str(tmp_path / "out.png"), "--weights", str(tiny_weights),
                 "--max-pixels", "100"])
    check_one_line_error(capsys, code, "small.png", "400 pixels is over the limit of 100")
    code = main(["upscale", str(small), "-s", "2", "-o", str(tmp_path / "out.png"), "--weights", str(tiny_weights),
                 "--max-pixels", "400"])
    assert code == 0


def _formats(tmp: Path) -> dict[str, tuple[Path, tuple[int, int]]]:
    rgb = random_rgb(12, 10)
    out: dict[str, tuple[Path, tuple[int, int]]] = {}

    def save(name: str, img: Image.Image, **kw: object) -> None:
        img.save(tmp / name, **kw)
        out[name] = (tmp / name, (img.size[0], img.size[1]))

    save("gray16.png", Image.fromarray(np.ascontiguousarray(rgb[..., 0].astype(np.uint16) * 257)))
    save("float32.tif", Image.fromarray(np.ascontiguousarray(rgb[..., 0].astype(np.float32) / 255)))
    save("palette.png", Image.fromarray(rgb).convert("P"))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"))
    save("la.png", Image.fromarray(rgb).convert("LA"))
    save("rgba.png", Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])))
    save("one_bit.png", Image.fromarray(rgb).convert("1"))
    save("bmp.bmp", Image.fromarray(rgb))
    save("webp.webp", Image.fromarray(rgb), lossless=True)
    save("name with spaces ünïcödé.png", Image.fromarray(rgb))
    save("tiny_1x1.png", Image.fromarray(rgb[:1, :1]))
    save("tiny_2x3.png", Image.fromarray(rgb[:2, :3]))
    return out


def test_formats_are_handled(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    formats = _formats(src)
    outdir = tmp_path / "out"
    code = main(["upscale", str(src), "-s", "2", "-o", str(outdir), "--weights", str(tiny_weights)])
    _, err = capsys.readouterr()
    assert code == 0, err
    for name, (path, (w, h)) in formats.items():
        result = Image.open(outdir / f"{path.stem}_x2.png")
        assert result.size == (2 * w, 2 * h), name
    assert Image.open(outdir / "rgba_x2.png").mode == "RGBA"
    assert Image.open(outdir / "la_x2.png").mode == "LA"
    assert Image.open(outdir / "gray16_x2.png").mode in ("I;16", "I")
    assert load_image(formats["gray16.png"][0]).bit_depth == 16


def test_exif_orientation_and_animated_gif(tmp_path: Path, tiny_weights: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    img = Image.fromarray(random_rgb(10, 30))  # 30 wide, 10 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    loaded = load_image(tmp_path / "rotated.jpg")
    assert (loaded.height, loaded.width) == (30, 10)
    frames = [Image.fromarray(random_rgb(8, 9, seed=s)) for s in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    code = main(["upscale", str(tmp_path / "anim.gif"), "-s", "2", "-o", str(tmp_path / "o.png"),
                 "--weights", str(tiny_weights)])
    _, err = capsys.readouterr()
    assert code == 0 and "animated image, using the first frame only" in err
    assert Image.open(tmp_path / "o.png").size == (18, 16)


def test_output_problems(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_png(tmp_path / "a.png", random_rgb(10, 10))
    code = main(["upscale", str(src), "-s", "2", "-o", str(src), "--weights", str(tiny_weights), "--overwrite"])
    check_one_line_error(capsys, code, "a.png", "overwrite its own input")
    code = main(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "no" / "dir" / "o.png"),
                 "--weights", str(tiny_weights)])
    check_one_line_error(capsys, code, "does not exist")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root ignores permissions)")
        code = main(["upscale", str(src), "-s", "2", "-o", str(locked / "o.png"), "--weights", str(tiny_weights)])
        check_one_line_error(capsys, code, "not writable")
    finally:
        locked.chmod(0o700)


def test_unwritable_output_folder_even_as_root(tmp_path: Path, tiny_weights: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Root ignores permission bits, so simulate the OS refusing the write (in the PNG encoder,
    which writes as the bands of tiles arrive)."""
    import vdsr.png

    src = write_png(tmp_path / "a.png", random_rgb(10, 10))

    def refuse(*a: object, **k: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(vdsr.png.PngWriter, "write_rows", refuse)
    code = main(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.png"), "--weights", str(tiny_weights),
                 "--precision", "fp32"])  # exact: no recipe check to note on stderr
    check_one_line_error(capsys, code, "o.png", "Permission denied")
    assert not (tmp_path / "o.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("scale", ["1", "0.5", "-3", "nan", "inf", "abc"])
def test_bad_scales_are_usage_errors(scale: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["upscale", "x.png", "-s", scale, "-o", "o.png"])
    assert exc.value.code == 2
    assert "scale" in capsys.readouterr().err


def test_absurd_scale_and_small_tile(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_png(tmp_path / "a.png", random_rgb(10, 10))
    with pytest.raises(SystemExit) as exc:  # a usage error, like -s 1 (issue 18, bug 7)
        main(["upscale", str(src), "-s", "1000", "-o", str(tmp_path / "o.png"), "--weights", str(tiny_weights)])
    assert exc.value.code == 2 and "too large (at most 16)" in capsys.readouterr().err
    code = main(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.png"), "--weights", str(tiny_weights),
                 "--tile", "5"])
    check_one_line_error(capsys, code, "smaller than the receptive field (9x9)")
    assert not (tmp_path / "o.png").exists()


def test_bad_weights_via_cli(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_png(tmp_path / "a.png", random_rgb(10, 10))
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(tiny_weights.read_bytes()[:300])
    for weights, needle in ((trunc, "trunc.safetensors"), (tmp_path / "none.safetensors", "no such weights file")):
        code = main(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.png"), "--weights", str(weights)])
        check_one_line_error(capsys, code, needle)
    assert not (tmp_path / "o.png").exists()


@pytest.mark.subprocess
def test_crash_mid_batch_leaves_finished_outputs_whole(tmp_path: Path, tiny_weights: Path) -> None:
    """SIGKILL while the third output is being written: the first two are complete PNGs and the
    third never appears under its final name."""
    import signal
    import subprocess
    import sys
    import textwrap

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        write_png(folder / f"{i}.png", random_rgb(16, 16, seed=i))
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import vdsr.png
        from vdsr.cli import main
        real_close = vdsr.png.PngWriter.close
        count = []
        def dying_close(self):
            count.append(1)
            if len(count) == 3:  # the third PNG is half written: its temp file holds its first bands
                self.stream.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_close(self)
        vdsr.png.PngWriter.close = dying_close
        sys.exit(main(["upscale", {str(folder)!r}, "-s", "2", "-o", {str(out)!r},
                       "--weights", {str(tiny_weights)!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    finished = sorted(p.name for p in out.glob("*.png"))
    assert finished == ["0_x2.png", "1_x2.png"]
    for name in finished:
        with Image.open(out / name) as im:
            im.load()
            assert im.size == (32, 32)
