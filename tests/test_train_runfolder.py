"""vdsr.train.runfolder: the run folder: where a training run may write (issue 23: a new run never
replaces files it did not write), what it leaves when a write fails or the process is killed,
and the checkpoints and configs a resume refuses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import _tree, one_error_line, random_rgb, tiny_args, tmpfs, write_png
from vdsr.cli import main
from vdsr.train import TrainConfig, Trainer
from vdsr.weights.checkpoints import load_checkpoint


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


def error_after_training(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    """A run that fails while training: its progress lines, then one error line, no traceback."""
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("vdsr: error: ") and "Traceback" not in err and err.count("vdsr: error") == 1, err
    for needle in needles:
        assert needle in last, (needle, last)
    return last


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


class _FailingSampler:
    """Serves ``good`` batches, then fails: a run that dies before its first checkpoint."""

    state: dict = {}

    def __init__(self, good: int) -> None:
        self.left = good

    def batch(self, size: int, part: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self.left == 0:
            raise RuntimeError("died")
        self.left -= 1
        x = np.random.rand(size, 1, 21, 21).astype(np.float32)
        return x, x


def test_a_replacing_run_drops_the_old_runs_state(tmp_path: Path, train_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`--overwrite` (a fresh run in a used folder): the old checkpoint, weights and log rows go
    at the start, so dying before the first checkpoint leaves nothing to resume wrongly."""
    run = tmp_path / "run"
    assert main(tiny_args(train_dir, run, 10, every=5)) == 0
    assert (run / "checkpoint.pt").exists() and (run / "last.safetensors").exists()
    cfg = TrainConfig(run_dir=str(run), depth=4, width=8, patch=21, batch_size=2, steps=20,
                      log_every=1, checkpoint_every=10, val_dir=None, scales=[2], threads=1)
    with pytest.raises(RuntimeError, match="died"):
        Trainer(cfg, overwrite=True, sampler=_FailingSampler(good=3)).fit()
    assert not (run / "checkpoint.pt").exists() and not (run / "last.safetensors").exists()
    steps = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3]
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 1
    assert "no checkpoint.pt to resume from" in capsys.readouterr().err


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


def fill(disk: Path, leave: int) -> Path:
    """Fill the file system of ``disk`` with one file until ``leave`` bytes are left free."""
    import os

    filler = disk / "filler"
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


def check_whole(run: Path) -> None:
    """Nothing half-written: no temp file anywhere, every metrics.csv line complete."""
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    lines = (run / "metrics.csv").read_text().split("\n")
    assert lines[-1] == "" and len({line.count(",") for line in lines[:-1]}) == 1


def test_disk_full_while_training_keeps_the_last_checkpoint_and_nothing_half_written(
        tmp_path: Path, data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23, item 7, on a real full tmpfs: torch.save's 'RuntimeError: [enforce fail at
    inline_container.cc:672] unexpected pos' and curve.png's 'OSError: No space left on
    device' were tracebacks. Now each is one line naming the file, with the last good
    checkpoint kept, nothing half-written, and --resume continues once there is space."""
    from vdsr.weights.checkpoints import load_checkpoint

    page = 4096
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        run = disk / "run"
        no_validation = [*train_args(data, run, steps=2), "--val-dir", "none"]
        assert main(no_validation) == 0
        good = (run / "checkpoint.pt").read_bytes()
        filler = fill(disk, leave=2 * page)  # the log rows fit; a checkpoint (~24 KB) does not
        err = error_after_training(capsys, main(["train", "--resume", str(run), "--steps", "4"]),
                             f"{run / 'checkpoint.pt'}: could not write it at step 4 (No space left on device)",
                             "the previous checkpoint is kept (step 2)", f"continue with --resume {run}")
        assert "inline_container" not in err
        assert (run / "checkpoint.pt").read_bytes() == good
        check_whole(run)
        filler.unlink()
        assert main(["train", "--resume", str(run), "--steps", "4"]) == 0
        assert load_checkpoint(run / "checkpoint.pt")["step"] == 4

        # curve.png (~46 KB) after a checkpoint that fits: the checkpoint of that step is saved
        run = disk / "validated"
        assert main(train_args(data, run, steps=2)) == 0
        curve = (run / "curve.png").read_bytes()
        checkpoint_size = len((run / "checkpoint.pt").read_bytes())
        filler = fill(disk, leave=checkpoint_size + 4 * page)
        error_after_training(capsys, main(["train", "--resume", str(run), "--steps", "4"]),
                             f"{run / 'curve.png'}: could not write it at step 4 (No space left on device)",
                             "the checkpoint of step 4 is saved")
        assert (run / "curve.png").read_bytes() == curve
        assert load_checkpoint(run / "checkpoint.pt")["step"] == 4
        check_whole(run)
    capsys.readouterr()


@pytest.mark.subprocess
def test_sigkill_while_writing_checkpoint_keeps_previous(tmp_path: Path, train_dir: Path) -> None:
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, pathlib, signal, sys
        from vdsr.cli import main
        real_write = pathlib.Path.write_bytes
        calls = []
        def dying_write(self, data):
            if self.name.startswith(".checkpoint.pt."):
                calls.append(1)
                if len(calls) == 2:  # second checkpoint: write half, then die mid-write
                    real_write(self, bytes(data)[: len(data) // 2])
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_write(self, data)
        pathlib.Path.write_bytes = dying_write
        sys.exit(main({tiny_args(train_dir, run, 40, every=10)!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert int(load_checkpoint(run / "checkpoint.pt")["step"]) == 10
    assert main(["train", "--resume", str(run)]) == 0
    assert int(load_checkpoint(run / "checkpoint.pt")["step"]) == 40


def test_a_log_row_that_does_not_fit_is_cut_off_again(tmp_path: Path) -> None:
    """A full disk takes what fits of a write, then refuses: the row is undone, not left half."""
    from vdsr.train.runfolder import append_whole

    with tmpfs(tmp_path / "disk", "size=64k") as disk:
        log = disk / "metrics.csv"
        log.write_bytes(b"x" * 4000)  # 96 bytes left in its page
        fill(disk, leave=0)
        with pytest.raises(OSError, match="No space left"):
            append_whole(log, b"y" * 200)
        assert log.read_bytes() == b"x" * 4000
        with pytest.raises(OSError, match="No space left"):
            append_whole(disk / "new.csv", b"y" * 200)
        assert not (disk / "new.csv").exists()


def test_tensorboard_reads_the_logged_rows(tmp_path: Path, data: tuple[Path, Path]) -> None:
    """The events are written by the trainer itself (whole rows, errors raised where they
    happen), in TensorBoard's own format; a resumed run hides what a killed one logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main([*train_args(data, run, steps=4), "--val-dir", "none"]) == 0
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert {"learning/rate", "patches/per_s", "eta/s"} <= set(events.Tags()["scalars"])


def test_resume_refuses_an_edited_config_and_what_it_cannot_change(
        tmp_path: Path, data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23, item 11: an edited config.json ("depth": "4", "steps": "many", "scales": [])
    raised TypeError/ValueError; an edited learning_rate was accepted, ignored (the optimiser's
    comes from the checkpoint) and recorded as used; `--resume R --batch-size 2
    --learning-rate 0.5` ignored both flags. Each is now one line, and nothing is written."""
    import json

    run = tmp_path / "run"
    assert main([*train_args(data, run, steps=2), "--val-dir", "none"]) == 0
    capsys.readouterr()
    config = json.loads((run / "config.json").read_text())
    cases = [
        ({"depth": "4"}, "config.json: depth must be an integer, got '4'"),
        ({"steps": "many"}, "config.json: steps must be an integer, got 'many'"),
        ({"scales": []}, "config.json: scales must name at least one scale"),
        ({"depth": "4", "steps": "many"}, "depth must be an integer, got '4'; steps must be an integer"),
        ({"learning_rate": 0.5}, "says learning_rate 0.5, but checkpoint.pt was trained with learning_rate 0.0001"),
        ({"batch_size": 2, "seed": 9}, "says batch_size 2, seed 9, but checkpoint.pt was trained with batch_size 4, seed 0"),
        ({"lerning_rate": 0.5}, "unknown setting 'lerning_rate'"),
    ]
    for edit, needle in cases:
        (run / "config.json").write_text(json.dumps(config | edit))
        before = tree(run)
        one_error_line(capsys, main(["train", "--resume", str(run), "--steps", "4"]), needle)
        assert tree(run) == before, edit
    (run / "config.json").write_text(json.dumps(config))
    before = tree(run)
    one_error_line(capsys, main(["train", "--resume", str(run), "--batch-size", "2", "--learning-rate", "0.5"]),
                   "--batch-size, --learning-rate cannot change when resuming a run (only --steps, ")
    one_error_line(capsys, main(["train", "--resume", str(run), "--run-dir", str(tmp_path / "x")]),
                   "--run-dir cannot change when resuming")
    one_error_line(capsys, main(["train", "--resume", str(run), "--overwrite"]), "cannot be combined with --resume")
    (run / "metrics.csv").write_text("epoch,psnr\n1,30\n")
    one_error_line(capsys, main(["train", "--resume", str(run), "--steps", "4"]), "metrics.csv: not this run's training log")
    (run / "metrics.csv").write_bytes(before["metrics.csv"])
    assert tree(run) == before
    # the library says which fields, in its own words
    from vdsr.errors import InvalidTrainConfig, RecipeChanged, ResumeOverrideRefused
    from vdsr.train import RunFolder

    with pytest.raises(ResumeOverrideRefused) as refused:
        RunFolder(run).resume({"batch_size": 2, "learning_rate": 0.5, "steps": 9})
    assert refused.value.fields == ("batch_size", "learning_rate") and "steps" in refused.value.allowed
    (run / "config.json").write_text(json.dumps(config | {"learning_rate": 0.5}))
    with pytest.raises(RecipeChanged) as changed:
        RunFolder(run).resume()
    assert changed.value.changes == {"learning_rate": (1e-4, 0.5)}
    (run / "config.json").write_text(json.dumps(config | {"depth": "4", "steps": "many"}))
    with pytest.raises(InvalidTrainConfig) as invalid:
        RunFolder(run).resume()
    assert list(invalid.value.problems) == ["depth", "steps"] and invalid.value.source == str(run / "config.json")
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(run), "--steps", "4"]) == 0
    capsys.readouterr()


def test_resume_refuses_a_missing_corrupt_or_mismatched_checkpoint_and_writes_nothing(
        tmp_path: Path, train_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14: each bad resume stops with one line and leaves the run folder byte-identical
    (no config.json rewrite with the new --steps, no metrics cut, no new files)."""
    import json
    import pickle

    from vdsr.nn.model import VDSR, VDSRConfig

    run = tmp_path / "run"
    assert main(tiny_args(train_dir, run, 10, every=5)) == 0
    capsys.readouterr()
    good = (run / "checkpoint.pt").read_bytes()
    config_text = (run / "config.json").read_text()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    def other_model_state(path: Path) -> None:
        state = load_checkpoint(path)
        state["model"] = VDSR(VDSRConfig(depth=5, width=8)).state_dict()
        torch.save(state, path)

    cases = [
        ("no checkpoint.pt to resume from", lambda p: p.unlink()),
        ("unreadable checkpoint (truncated", lambda p: p.write_bytes(good[: len(good) // 2])),
        ("unreadable checkpoint (truncated", lambda p: p.write_bytes(b"half a checkpoint")),
        ("unsafe checkpoint refused", lambda p: p.write_bytes(pickle.dumps(Evil(), protocol=2))),
        ("unsafe checkpoint refused", lambda p: p.write_bytes(pickle.dumps(Evil()))),
        ("not a training checkpoint (missing", lambda p: torch.save({"step": 3}, p)),
        ("weights do not match the architecture", other_model_state),
    ]
    for needle, spoil in cases:
        (run / "checkpoint.pt").write_bytes(good)
        spoil(run / "checkpoint.pt")
        before = _tree(run)
        one_error_line(capsys, main(["train", "--resume", str(run), "--steps", "30"]), str(run), needle)
        assert _tree(run) == before, needle
    assert not marker.exists()
    # config.json describing another architecture than the checkpoint's
    (run / "checkpoint.pt").write_bytes(good)
    (run / "config.json").write_text(json.dumps(json.loads(config_text) | {"depth": 6}))
    before = _tree(run)
    one_error_line(capsys, main(["train", "--resume", str(run), "--steps", "30"]),
                    "holds a model with depth 4, but config.json describes depth 6")
    assert _tree(run) == before
