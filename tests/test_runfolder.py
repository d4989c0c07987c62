"""The run folder: where a training run may write (issue 23: a new run never replaces files it did
not write), and what it leaves when a write fails."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import random_rgb, write_png
from vdsr.cli import main


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    hr, val = tmp_path / "hr", tmp_path / "val"
    hr.mkdir()
    val.mkdir()
    for i in range(2):
        write_png(hr / f"{i}.png", random_rgb(60 + 5 * i, 64, seed=i))
    write_png(val / "v.png", random_rgb(40, 44, seed=9))
    return hr, val


def train_args(data: tuple[Path, Path], run: Path, steps: int = 4) -> list[str]:
    return ["train", "--run-dir", str(run), "--train-dirs", str(data[0]), "--val-dir", str(data[1]),
            "--depth", "3", "--width", "4", "--batch-size", "4", "--steps", str(steps),
            "--patch", "21", "--scales", "2", "--downscales", "1.0", "--checkpoint-every", "2",
            "--val-every", "2", "--log-every", "1", "--threads", "1"]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("vdsr: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at ``path`` (``options``: e.g. ``size=64k`` or ``ro``); skips the test
    where mounting is not permitted (not root, no CAP_SYS_ADMIN, no tmpfs)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_new_run_never_replaces_files_it_did_not_write(tmp_path: Path, data: tuple[Path, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23, item 1: a folder holding the user's own best/last.safetensors, config.json and
    metrics.csv was taken as a run folder and all of them replaced (and a foreign metrics.csv
    failed only after the weights were deleted). Now it is refused, with nothing touched;
    --overwrite writes the run's files there and leaves the rest alone."""
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("best.safetensors", "last.safetensors"):
        (mine / name).write_bytes(b"the user's own weights")
    (mine / "config.json").write_text('{"model": "mine"}')
    (mine / "metrics.csv").write_text("epoch,psnr\n1,30.0\n")
    (mine / "notes.txt").write_text("keep me")
    before = tree(mine)
    one_error_line(capsys, main(train_args(data, mine)), f"{mine}: is not empty and is not a training run",
                   "best.safetensors", "--overwrite")
    assert tree(mine) == before

    assert main([*train_args(data, mine), "--overwrite"]) == 0
    capsys.readouterr()
    assert (mine / "notes.txt").read_text() == "keep me"
    assert (mine / "checkpoint.pt").exists()
    assert (mine / "metrics.csv").read_text().startswith("step,")


def test_a_folder_holding_a_run_is_resumed_or_overwritten_not_replaced(
        tmp_path: Path, data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(train_args(data, run)) == 0
    capsys.readouterr()
    before = tree(run)
    one_error_line(capsys, main(train_args(data, run)), "already holds a training run",
                   f"--resume {run}", "--overwrite")
    assert tree(run) == before
    # weights but no checkpoint (a run stopped by a full disk at its first checkpoint): refused
    (run / "checkpoint.pt").unlink()
    one_error_line(capsys, main(train_args(data, run)), "already holds a training run's weights")
    # a run that died before its first checkpoint left nothing to keep: a new run takes it
    for name in ("best.safetensors", "last.safetensors"):
        (run / name).unlink()
    assert main(train_args(data, run)) == 0
    assert (run / "checkpoint.pt").exists()
    # an empty folder is a new run's
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(train_args(data, empty)) == 0
    capsys.readouterr()


def test_unusable_run_folders_are_one_line(tmp_path: Path, data: tuple[Path, Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23, item 6: a --run-dir that is a file, under a file or unwritable gave
    NotADirectoryError / PermissionError tracebacks."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_error_line(capsys, main(train_args(data, afile)), f"{afile}: is a file, not a folder")
    one_error_line(capsys, main(train_args(data, afile / "run")), f"{afile} is a file, not a folder")
    assert afile.read_text() == "x"
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        one_error_line(capsys, main(train_args(data, ro / "run")), f"{ro} is not writable (read-only file system)")
        one_error_line(capsys, main(train_args(data, ro)), f"{ro}: is not writable (read-only file system)")


def test_the_library_checks_the_folder_before_loading_or_writing(tmp_path: Path) -> None:
    from vdsr.errors import RunFolderRefused
    from vdsr.train import TrainConfig, Trainer

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "last.safetensors").write_bytes(b"the user's own weights")
    # training data that does not exist: the folder is refused first, before any data is read
    config = TrainConfig(run_dir=str(mine), train_dirs=[str(tmp_path / "nowhere")], val_dir=None,
                         depth=3, width=4, patch=21, scales=[2])
    with pytest.raises(RunFolderRefused) as info:
        Trainer(config)
    assert (info.value.reason, info.value.files) == ("not_empty", ("last.safetensors",))
    assert tree(mine) == {"last.safetensors": b"the user's own weights"}
