"""vdsr.io.outputs, the one output policy, and the commands that write files through it: names, never
replacing what was not asked for (the input never), destinations checked before any work, one
line for every refusal (issue 23, items 2, 3, 6 and the rough edges; issue 24's output module)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import check_one_line_error, random_rgb, run, tmpfs, write_png
from vdsr.cli import main
from vdsr.errors import (
    OutputCollision,
    OutputExists,
    OutputIsInput,
    OutputNameRefused,
    OutputUnwritable,
)
from vdsr.io import outputs


def one_line(code: int, err: str, *needles: str, exit_code: int = 1) -> str:
    """The refusal is exactly one `vdsr: error:` line (warnings aside), with no traceback."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("vdsr: warning")]
    assert code == exit_code, err
    assert len(lines) == 1 and lines[0].startswith("vdsr: error: "), err
    assert "Traceback" not in err and "PermissionError" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@contextlib.contextmanager
def read_only_place(tmp_path: Path) -> Iterator[Path]:
    """A real read-only place: a read-only tmpfs (root ignores permission bits, not a read-only
    mount); skipped where mounting is not permitted."""
    with tmpfs(tmp_path / "ro", "ro,size=64k") as place:
        yield place


def in_the_way(tmp_path: Path) -> Path:
    """A file where a folder would have to be: works for every user, root too."""
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file, not a folder")
    return blocker


# -- the library ---------------------------------------------------------------------------------


def test_naming_rule_and_output_rule() -> None:
    assert outputs.output_name("photo", 2) == "photo_x2.png"
    assert outputs.output_name("photo", 2.5, fmt="jpg") == "photo_x2.5.jpg"
    assert outputs.output_name("photo", 3, suffix="") == "photo.png"
    assert outputs.NamingRule(2, "-hd", "webp").tail == "-hd.webp"
    with pytest.raises(OutputNameRefused) as bad:
        outputs.NamingRule(2, "a/b")
    assert bad.value.reason == "suffix_separator"
    assert outputs.output_is_file("x.png", one_file=True)
    assert not outputs.output_is_file("x/", one_file=True)
    assert not outputs.output_is_file("x", one_file=False)
    for name, one, reason in (("x.png", False, "several_inputs"), ("x.foo", True, "bad_extension"),
                              ("x", True, "no_extension")):
        with pytest.raises(OutputNameRefused) as refused:
            outputs.output_is_file(name, one_file=one)
        assert refused.value.reason == reason and refused.value.path == name
    with pytest.raises(OutputNameRefused) as mismatch:
        outputs.check_format("a.png", "jpg")
    assert mismatch.value.reason == "format_mismatch" and mismatch.value.fmt == "jpg"
    assert "--" not in str(mismatch.value)  # library words never name a flag


def test_check_target_refuses_what_was_not_asked_for(tmp_path: Path) -> None:
    src = write_png(tmp_path / "a.png", random_rgb(8, 8))
    with pytest.raises(OutputIsInput) as same:
        outputs.check_target(src, overwrite=True, inputs=[src])
    assert same.value.source == str(src)
    link = tmp_path / "link.png"
    link.symlink_to(src)
    with pytest.raises(OutputIsInput):  # the input by another name
        outputs.check_target(link, overwrite=True, inputs=[src])
    existing = write_png(tmp_path / "b.png", random_rgb(8, 8))
    with pytest.raises(OutputExists) as exists:
        outputs.check_target(existing)
    assert exists.value.link_to is None and "--overwrite" not in str(exists.value)
    outputs.check_target(existing, overwrite=True)
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(OutputExists) as nowhere:
        outputs.check_target(dangling)
    assert nowhere.value.link_to == str(tmp_path / "nowhere.png")
    outputs.check_target(dangling, overwrite=True)
    with pytest.raises(OutputUnwritable) as folder:
        outputs.check_target(tmp_path)
    assert folder.value.reason == "is_folder"
    with pytest.raises(OutputUnwritable) as missing:
        outputs.check_target(tmp_path / "no" / "c.png")
    assert missing.value.reason == "missing_folder"
    outputs.check_target(tmp_path / "no" / "c.png", folder_exists=False)  # may be created
    blocker = in_the_way(tmp_path)
    with pytest.raises(OutputUnwritable) as under:
        outputs.check_target(blocker / "sub" / "c.png", folder_exists=False)
    assert under.value.reason == "uncreatable" and under.value.blocker == str(blocker)
    with pytest.raises(OutputCollision) as twice:
        outputs.check_unique([("x/a.png", tmp_path / "o.png"), ("y/a.png", tmp_path / "o.png")])
    assert (twice.value.first, twice.value.second) == ("x/a.png", "y/a.png")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the probes are gone


def test_read_only_folder_is_found_by_a_probe(tmp_path: Path) -> None:
    with read_only_place(tmp_path) as ro:
        with pytest.raises(OutputUnwritable) as refused:
            outputs.check_target(ro / "x.png")
        assert refused.value.reason == "unwritable" and "Read-only" in refused.value.detail
        with pytest.raises(OutputUnwritable):
            outputs.check_folder(ro / "new" / "deeper", create=True)


def test_leftovers_are_exactly_our_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "photo_x2.png"
    ours = tmp_path / ".photo_x2.png.ab3_x9zq.tmp"
    others = [tmp_path / ".photo_x2.png.toolong99.tmp", tmp_path / ".other.png.ab3_x9zq.tmp",
              tmp_path / "photo_x2.png.ab3_x9zq.tmp", tmp_path / ".photo_x2.png.ab3_x9zq.tmp.keep"]
    for p in (ours, *others):
        p.write_bytes(b"x")
    assert outputs.leftover_temp_files(target) == [ours]
    assert outputs.remove_leftovers([target]) == [ours]
    assert not ours.exists() and all(p.exists() for p in others)


def test_display_quotes_names_with_control_characters() -> None:
    assert outputs.display("a b é.png") == "a b é.png"
    shown = outputs.display("bad\nvdsr: error: forged.png")
    assert "\n" not in shown and shown.startswith("'")


# -- the commands (issue 23) ------------------------------------------------------------------------


def test_compare_never_replaces_the_input_or_the_output(tmp_path: Path, tiny_weights: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23, item 2: `--compare small.png` replaced the input with the comparison, and
    `-o cz.png --compare cz.png` the output just written; an existing file was replaced without
    --overwrite. Now each is refused before any work (nothing is written) in one line."""
    src = write_png(tmp_path / "small.png", random_rgb(12, 12))
    before = src.read_bytes()
    w = ["--weights", str(tiny_weights)]
    out = tmp_path / "g3.png"
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(out), "--compare", str(src), "--overwrite", *w], capsys)
    one_line(code, err, "small.png", "overwrite its own input")
    assert src.read_bytes() == before and not out.exists()
    same = tmp_path / "cz.png"
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(same), "--compare", str(same), *w], capsys)
    one_line(code, err, "cz.png", "would both be written")
    assert not same.exists()
    existing = write_png(tmp_path / "mine.png", random_rgb(5, 5))
    mine = existing.read_bytes()
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(out), "--compare", str(existing), *w], capsys)
    one_line(code, err, "mine.png: already exists (pass --overwrite to replace it)")
    assert existing.read_bytes() == mine and not out.exists()
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(out), "--compare", str(existing),
                        "--overwrite", *w], capsys)
    assert code == 0, err
    assert existing.read_bytes() != mine and Image.open(existing).format == "PNG"


def test_compare_format_follows_its_extension(tmp_path: Path, tiny_weights: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23, item 2: `--compare c.jpg` wrote PNG bytes into a .jpg; an extension that is no
    image format is refused before any work."""
    src = write_png(tmp_path / "small.png", random_rgb(12, 12))
    w = ["--weights", str(tiny_weights)]
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.png"), "--compare",
                        str(tmp_path / "c.jpg"), *w], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "c.jpg").format == "JPEG"
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o2.png"), "--compare",
                        str(tmp_path / "c.foo"), *w], capsys)
    one_line(code, err, "c.foo", "cannot write '.foo'")
    assert not (tmp_path / "o2.png").exists()


def test_compare_with_several_inputs_is_a_usage_error(tmp_path: Path, tiny_weights: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23, item 2: with several inputs (or a folder) --compare was dropped silently."""
    a = write_png(tmp_path / "a.png", random_rgb(8, 8))
    b = write_png(tmp_path / "b.png", random_rgb(8, 8))
    out = tmp_path / "out"
    for inputs in ([str(a), str(b)], [str(tmp_path)]):
        code, _, err = run(["upscale", *inputs, "-s", "2", "-o", str(out), "--compare", str(tmp_path / "c.png"),
                            "--weights", str(tiny_weights)], capsys)
        one_line(code, err, "--compare", "one input file", exit_code=2)
        assert not out.exists() and not (tmp_path / "c.png").exists()


def test_evaluate_checks_its_json_destination_first(tmp_path: Path, tiny_weights: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23, item 3: `vdsr evaluate --json /unwritable/e.json` failed after computing every
    score. Now it is refused before anything is computed (no table is printed)."""
    data = tmp_path / "hr"
    data.mkdir()
    write_png(data / "a.png", random_rgb(24, 24))
    blocker = in_the_way(tmp_path)
    for target in (tmp_path / "missing" / "e.json", blocker / "e.json"):
        code, out, err = run(["evaluate", "--data", str(data), "--scales", "2", "--weights", str(tiny_weights),
                              "--json", str(target)], capsys)
        one_line(code, err, str(target))
        assert out == "", out  # nothing was computed


@pytest.mark.parametrize("command", ["compare", "convert", "rgb-onnx", "demo"])
@pytest.mark.parametrize("place", ["read-only", "file in the way"])
def test_unwritable_destinations_are_one_line(command: str, place: str, tmp_path: Path, tiny_weights: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23, item 6: `--compare /ro/c.png`, `convert -o /ro/x.safetensors`, `export
    --rgb-onnx /ro/m.onnx` and `demo -o /ro/demo` gave PermissionError (or NotADirectoryError)
    tracebacks; now one line, before any work, and nothing is written."""
    src = write_png(tmp_path / "a.png", random_rgb(10, 10))
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(read_only_place(tmp_path)) if place == "read-only" else in_the_way(tmp_path)
        argv = {
            "compare": ["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.png"), "--compare",
                        str(base / "c.png"), "--weights", str(tiny_weights)],
            "convert": ["convert", str(tiny_weights), "-o", str(base / "x.safetensors")],
            "rgb-onnx": ["export", str(tiny_weights), "--rgb-onnx", str(base / "m.onnx"), "--scale", "2"],
            "demo": ["demo", "-o", str(base / "demo"), "--weights", str(tiny_weights)],
        }[command]
        code, out, err = run(argv, capsys)
        one_line(code, err, str(base))
        assert out == "" and not (tmp_path / "o.png").exists()
        if place == "read-only":
            assert os.listdir(base) == []


def test_a_link_to_nowhere_is_not_replaced_without_overwrite(tmp_path: Path, tiny_weights: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Rough edge (issue 23): a dangling output link was replaced without --overwrite."""
    src = write_png(tmp_path / "a.png", random_rgb(10, 10))
    link = tmp_path / "out.png"
    link.symlink_to(tmp_path / "nowhere.png")
    w = ["--weights", str(tiny_weights)]
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(link), *w], capsys)
    one_line(code, err, "out.png: already exists, as a link to", "--overwrite")
    assert link.is_symlink() and not (tmp_path / "nowhere.png").exists()
    code, _, err = run(["upscale", str(src), "-s", "2", "-o", str(link), "--overwrite", *w], capsys)
    assert code == 0, err
    assert not link.is_symlink() and Image.open(link).size == (20, 20)
    assert not (tmp_path / "nowhere.png").exists()  # the link itself is replaced, nothing through it


def test_two_inputs_writing_one_output_are_named_and_nothing_is_created(
        tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rough edge (issue 23): `two inputs would both write out/photo_x2.png` named neither input,
    and created the empty output folder anyway."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_png(tmp_path / "a" / "photo.png", random_rgb(8, 8))
    second = write_png(tmp_path / "b" / "photo.jpg", random_rgb(8, 8))
    out = tmp_path / "out"
    code, _, err = run(["upscale", str(first), str(second), "-s", "2", "-o", str(out), "--weights",
                        str(tiny_weights)], capsys)
    one_line(code, err, str(first), str(second), str(out / "photo_x2.png"))
    assert not out.exists()


def test_a_newline_in_a_file_name_cannot_forge_an_error_line(tmp_path: Path, tiny_weights: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Rough edge (issue 23): a file named 'x\\nvdsr: error: ...' printed a second error line."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_png(folder / "good.png", random_rgb(8, 8))
    (folder / "bad\nvdsr: error: forged.png").write_bytes(b"not an image")
    code, _, err = run(["upscale", str(folder), "-s", "2", "-o", str(tmp_path / "out"), "--weights",
                        str(tiny_weights)], capsys)
    assert code == 1
    assert not [line for line in err.splitlines() if line.startswith("vdsr: error: forged")], err
    assert sum(line.startswith("vdsr: error:") for line in err.splitlines()) == 1, err
    assert "forged.png" in err  # still named, escaped


def test_demo_does_not_replace_its_files_without_overwrite(tmp_path: Path, tiny_weights: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Rough edge (issue 23): `vdsr demo` replaced an existing compare.png."""
    out = tmp_path / "demo"
    out.mkdir()
    mine = write_png(out / "compare.png", random_rgb(6, 6))
    before = mine.read_bytes()
    code, stdout, err = run(["demo", "-o", str(out), "--weights", str(tiny_weights)], capsys)
    one_line(code, err, "compare.png: already exists (pass --overwrite to replace it)")
    assert mine.read_bytes() == before and sorted(os.listdir(out)) == ["compare.png"]
    code, stdout, err = run(["demo", "-o", str(out), "--weights", str(tiny_weights), "--overwrite"], capsys)
    assert code == 0, err
    assert mine.read_bytes() != before and "compare.png" in stdout


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

    # a real read-only place (as root, chmod cannot make a folder read-only; a read-only mount can)
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        code, _, err = run(["upscale", str(folder), "-s", "2", "-o", str(ro / "sub"),
                            "--weights", str(tiny_weights)], capsys)
        assert code == 1
        assert err.strip() == f"vdsr: error: {ro / 'sub'}: output folder {ro} is not writable (Read-only file system)"
        assert not (ro / "sub").exists()


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
