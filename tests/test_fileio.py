"""vdsr.io.fileio: atomic writes. A write that fails or is killed leaves no partial file under the
final name (a temp file in the destination folder, then ``os.replace``), and what is written
gets the permissions the umask gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import check_one_line_error, random_rgb, write_png
from vdsr.cli import main


def test_unwritable_output_folder_even_as_root(tmp_path: Path, tiny_weights: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Root ignores permission bits, so simulate the OS refusing the write (in the PNG encoder,
    which writes as the bands of tiles arrive)."""
    import vdsr.io.png

    src = write_png(tmp_path / "a.png", random_rgb(10, 10))

    def refuse(*a: object, **k: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(vdsr.io.png.PngWriter, "write_rows", refuse)
    code = main(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.png"), "--weights", str(tiny_weights),
                 "--precision", "fp32"])  # exact: no recipe check to note on stderr
    check_one_line_error(capsys, code, "o.png", "Permission denied")
    assert not (tmp_path / "o.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


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
        import vdsr.io.png
        from vdsr.cli import main
        real_close = vdsr.io.png.PngWriter.close
        count = []
        def dying_close(self):
            count.append(1)
            if len(count) == 3:  # the third PNG is half written: its temp file holds its first bands
                self.stream.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_close(self)
        vdsr.io.png.PngWriter.close = dying_close
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
