"""Training: data pipeline, schedules, clipping, faults, and kill-and-resume equality."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import _one_error_line, _tree, _weights_equal, random_rgb, tiny_args, write_png
from vdsr.cli import main
from vdsr.errors import DataError, TrainingError
from vdsr.train import TrainConfig, Trainer
from vdsr.train.config import learning_rate_factor
from vdsr.train.loop import clip_gradients
from vdsr.train.runfolder import load_checkpoint


def test_lr_schedules() -> None:
    c = TrainConfig(steps=100, schedule="step", decay_steps=40, val_dir=None)
    assert [learning_rate_factor(c, s) for s in (0, 39, 40, 80)] == pytest.approx([1, 1, 0.1, 0.01])
    c = TrainConfig(steps=100, schedule="exponential", decay_steps=50, val_dir=None)
    assert learning_rate_factor(c, 50) == pytest.approx(0.1) and learning_rate_factor(c, 25) == pytest.approx(0.1**0.5)
    c = TrainConfig(steps=100, schedule="cosine", warmup_steps=10, val_dir=None)
    assert learning_rate_factor(c, 0) == pytest.approx(0.1) and learning_rate_factor(c, 9) == pytest.approx(1.0)
    assert learning_rate_factor(c, 55) == pytest.approx(0.5) and learning_rate_factor(c, 100) == pytest.approx(0.0)


def test_adjustable_gradient_clipping() -> None:
    """SGD: each gradient is clipped to theta / lr (the paper); Adam: to the clip value."""
    model = torch.nn.Linear(4, 1)
    for optimizer, lr, bound in (("sgd", 0.1, 0.01 / 0.1), ("adam", 0.1, 0.01)):
        for p in model.parameters():
            p.grad = torch.full_like(p, 5.0)
        cfg = TrainConfig(optimizer=optimizer, clip=0.01, learning_rate=lr, val_dir=None)
        clip_gradients(cfg, model, lr)
        assert all(float(p.grad.abs().max()) == pytest.approx(bound) for p in model.parameters())


def _train_until(args: list[str], marker: Path, script: str | None = None) -> subprocess.Popen[str]:
    """Start `vdsr train` in a subprocess and return once ``marker`` exists (it must still run).

    With ``script``, run that Python code instead (it calls ``main(args)`` itself)."""
    cmd = ["-c", script] if script is not None else ["-m", "vdsr", *args]
    proc = subprocess.Popen([sys.executable, *cmd],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be signalled"
    return proc


@pytest.mark.slow
@pytest.mark.subprocess
def test_kill_and_resume_reaches_the_same_weights(tmp_path: Path, train_dir: Path) -> None:
    steps = 400
    full = tmp_path / "full"
    assert main(tiny_args(train_dir, full, steps, every=20)) == 0
    killed = tmp_path / "killed"
    proc = _train_until(tiny_args(train_dir, killed, steps, every=20), killed / "checkpoint.pt")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    step_at_kill = int(load_checkpoint(killed / "checkpoint.pt")["step"])
    assert 0 < step_at_kill < steps
    assert main(["train", "--resume", str(killed)]) == 0
    assert _weights_equal(full / "last.safetensors", killed / "last.safetensors") == 0.0
    # The log was cut back to the checkpoint and continued: one row per logged step.
    rows = (killed / "metrics.csv").read_text().splitlines()[1:]
    logged = [int(r.split(",")[0]) for r in rows]
    assert logged == sorted(set(logged)) and logged[-1] == steps


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigterm_stops_at_a_step_with_a_checkpoint_and_resumes_exactly(tmp_path: Path, train_dir: Path) -> None:
    """SIGTERM (what `timeout`, schedulers and `kill` send) saves the step it stopped at."""
    steps = 400
    full = tmp_path / "full"
    assert main(tiny_args(train_dir, full, steps, every=100)) == 0
    run = tmp_path / "stopped"
    proc = _train_until(tiny_args(train_dir, run, steps, every=100), run / "metrics.csv")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    step = int(load_checkpoint(run / "checkpoint.pt")["step"])
    assert f"at step {step} of {steps}" in err and "--resume" in err
    assert 100 <= step < steps
    assert not (run / "last.safetensors").exists()
    assert main(["train", "--resume", str(run)]) == 0
    assert _weights_equal(full / "last.safetensors", run / "last.safetensors") == 0.0


def _val_dir(tmp_path: Path) -> Path:
    val = tmp_path / "val"
    val.mkdir()
    write_png(val / "v.png", random_rgb(40, 44, seed=9))
    return val


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigint_during_validation_checkpoints_the_step_it_names(tmp_path: Path, train_dir: Path) -> None:
    """Issue 18: Ctrl-C while validating used to report "checkpoint saved" at a step that had
    none (the flag was read before validation) and to wait for the whole validation. Now the
    signal is acknowledged at once, cuts validation short (no partial row), and the checkpoint
    of the step named is written; resuming ends at the uninterrupted run's weights."""
    steps = 40
    args = tiny_args(train_dir, tmp_path / "full", steps, every=25)
    args[args.index("--val-dir") + 1] = str(_val_dir(tmp_path))
    args += ["--val-every", "10", "--log-every", "1", "--scales", "2"]
    assert main(args) == 0
    run, marker = tmp_path / "stopped", tmp_path / "validating"
    args[args.index("--run-dir") + 1] = str(run)
    # Validation made slow (real evaluations, repeated for up to a minute) so the signal lands in it.
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        import vdsr.train.loop
        from vdsr.cli import main
        real = vdsr.train.loop.evaluate_folder
        def slow_validation(*a, **k):
            Path({str(marker)!r}).touch()
            deadline = time.time() + 60
            while True:
                result = real(*a, **k)
                if time.time() > deadline:
                    return result
        vdsr.train.loop.evaluate_folder = slow_validation
        sys.exit(main({args!r}))
    """)
    proc = _train_until(args, marker, script)
    signalled = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    took = time.time() - signalled
    assert proc.returncode == 130, err
    assert "vdsr: stopping at the end of this step... (Ctrl-C again to stop at once)" in err
    step = int(load_checkpoint(run / "checkpoint.pt")["step"])
    assert step == 10, err
    assert f"stopped by SIGINT at step 10 of {steps}" in err and f"--resume {run}" in err
    assert took < 20, f"took {took:.1f} s to stop"
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[-1].startswith("10,") and lines[-1].endswith(",")  # step 10 logged, not validated
    assert main(["train", "--resume", str(run)]) == 0
    assert _weights_equal(tmp_path / "full" / "last.safetensors", run / "last.safetensors") == 0.0


def test_stop_request_is_acknowledged_and_cuts_validation_short(tmp_path: Path, train_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Library side: ``on_stop_requested`` hears the signal at once; validation stops at the
    next image; the interruption names the step of the checkpoint it wrote."""
    import vdsr.train.loop
    from vdsr.errors import TrainingInterrupted

    evaluated: list[str] = []
    real = vdsr.train.loop.evaluate_folder

    def validation_interrupted(*a: object, **k: object) -> object:
        os.kill(os.getpid(), signal.SIGINT)
        progress = k["progress"]
        evaluated.append("first")
        progress("v.png")  # type: ignore[operator]  # the check after the first image
        evaluated.append("rest")
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(vdsr.train.loop, "evaluate_folder", validation_interrupted)
    heard: list[str] = []
    cfg = TrainConfig(run_dir=str(tmp_path / "r"), train_dirs=[str(train_dir)], depth=3, width=4,
                      patch=21, batch_size=2, steps=20, val_every=4, checkpoint_every=100,
                      val_dir=str(_val_dir(tmp_path)), scales=[2], downscales=[1.0], threads=1)
    trainer = Trainer(cfg, on_stop_requested=heard.append)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    assert heard == ["SIGINT"] and evaluated == ["first"]
    assert (info.value.signal, info.value.step, info.value.steps) == ("SIGINT", 4, 20)
    assert int(load_checkpoint(tmp_path / "r" / "checkpoint.pt")["step"]) == 4
    assert not (tmp_path / "r" / "best.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_resume_refuses_a_missing_corrupt_or_mismatched_checkpoint_and_writes_nothing(
        tmp_path: Path, train_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14: each bad resume stops with one line and leaves the run folder byte-identical
    (no config.json rewrite with the new --steps, no metrics cut, no new files)."""
    import json
    import pickle

    from vdsr.model import VDSR, VDSRConfig

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
        _one_error_line(capsys, main(["train", "--resume", str(run), "--steps", "30"]), str(run), needle)
        assert _tree(run) == before, needle
    assert not marker.exists()
    # config.json describing another architecture than the checkpoint's
    (run / "checkpoint.pt").write_bytes(good)
    (run / "config.json").write_text(json.dumps(json.loads(config_text) | {"depth": 6}))
    before = _tree(run)
    _one_error_line(capsys, main(["train", "--resume", str(run), "--steps", "30"]),
                    "holds a model with depth 4, but config.json describes depth 6")
    assert _tree(run) == before


def test_init_weights_of_another_architecture_stop_before_writing(
        tmp_path: Path, train_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import tiny_model
    from vdsr.weights import WeightsMetadata, save_weights

    model = tiny_model(depth=3)
    weights = tmp_path / "d3.safetensors"
    save_weights(weights, model.state_dict(), WeightsMetadata(config=model.config, source="test"))
    run = tmp_path / "run"
    _one_error_line(capsys, main([*tiny_args(train_dir, run, 10), "--init-weights", str(weights)]),
                    str(weights), "weights of a model with depth 3; this run trains depth 4")
    assert not run.exists()


def test_device_sampler_cuts_the_same_patches(train_dir: Path) -> None:
    """`batch_tensors` (the GPU feed) draws and cuts exactly what `batch` does."""
    from vdsr.train.data import PatchSampler, collect_files, degraded_images

    for channels in (1, 3):
        images = list(degraded_images(collect_files([train_dir]), [2, 3], channels, [1.0, 0.7], 21))
        a, b = PatchSampler(images, 21, seed=4), PatchSampler(images, 21, seed=4)
        for part in (None, slice(2, 7), None):
            x, y = a.batch(9, part)
            xt, yt = b.batch_tensors(9, part, torch.device("cpu"))
            assert np.array_equal(x, xt.numpy()) and np.array_equal(y, yt.numpy())
        assert a.state == b.state
    # The whole run fed either way ends at the same weights.
    cfg = dict(depth=3, width=4, patch=21, batch_size=4, steps=6, val_dir=None, scales=[2, 3],
               downscales=[1.0], train_dirs=[str(train_dir)], threads=1, seed=1)
    host = Trainer(TrainConfig(run_dir=str(train_dir / "host"), **cfg))
    fed = Trainer(TrainConfig(run_dir=str(train_dir / "fed"), **cfg))
    assert not fed.device_feed  # CPU default: the host loop
    fed.device_feed = True
    host.fit()
    fed.fit()
    assert _weights_equal(train_dir / "host" / "last.safetensors", train_dir / "fed" / "last.safetensors") == 0.0


def test_deferred_loss_check_raises_before_anything_is_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the loss is read back only at log/validation/checkpoint steps; a non-finite one
    still stops the run before any weights are written, naming the first bad step."""
    monkeypatch.setattr(Trainer, "_defer_loss_check", lambda self: True)
    cfg = TrainConfig(run_dir=str(tmp_path / "r"), depth=3, width=4, patch=21, batch_size=2,
                      steps=10, log_every=5, checkpoint_every=5, val_dir=None, scales=[2], threads=1)
    trainer = Trainer(cfg, sampler=_NaNSampler())
    with pytest.raises(TrainingError, match="at step 1;"):
        trainer.fit()
    assert trainer.step == 5
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
    assert not (tmp_path / "r" / "last.safetensors").exists()


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


class _NaNSampler:
    state: dict = {}

    def batch(self, size: int, part: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        x = np.full((size, 1, 21, 21), np.nan, np.float32)
        return x, np.zeros_like(x)


def test_nonfinite_loss_stops_with_step_or_is_skipped(tmp_path: Path) -> None:
    cfg = TrainConfig(run_dir=str(tmp_path / "r"), depth=3, width=4, patch=21, batch_size=2,
                      steps=3, val_dir=None, scales=[2], threads=1)
    trainer = Trainer(cfg, sampler=_NaNSampler())
    with pytest.raises(TrainingError, match="step 1"):
        trainer.fit()
    assert not (tmp_path / "r" / "last.safetensors").exists()
    cfg.skip_nonfinite = True
    trainer = Trainer(cfg, sampler=_NaNSampler())
    trainer.fit()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert (tmp_path / "r" / "last.safetensors").exists()


def test_disk_full_while_checkpointing_keeps_last_good(tmp_path: Path, train_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The write refused as a full disk refuses it (the real fault, on a small tmpfs, is in
    tests/test_runfolder.py; this one runs where mounting is not permitted)."""
    from pathlib import Path as RealPath

    from vdsr.errors import RunWriteError

    cfg = TrainConfig(run_dir=str(tmp_path / "r"), train_dirs=[str(train_dir)], depth=3, width=4,
                      patch=21, batch_size=2, steps=4, checkpoint_every=2, val_dir=None,
                      downscales=[1.0], threads=1)
    trainer = Trainer(cfg)
    trainer.config.steps = 2  # the trainer keeps its own copy (precision resolved)
    trainer.fit()
    good = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    real_write = RealPath.write_bytes

    def full_disk(self: RealPath, data: bytes) -> int:
        if self.name.startswith(".checkpoint.pt."):
            raise OSError(28, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(RealPath, "write_bytes", full_disk)
    trainer.config.steps = 4
    with pytest.raises(RunWriteError, match="No space left on device.*previous checkpoint is kept \\(step 2\\)"):
        trainer.fit()
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == good
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]


def test_prepare_hdf5_and_train_from_it(tmp_path: Path, train_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import h5py

    h5 = tmp_path / "train.h5"
    assert main(["prepare", "--data", str(train_dir), "-o", str(h5), "--scales", "2", "3",
                 "--patch", "21", "--stride", "21", "--downscales", "1.0", "0.7"]) == 0
    with h5py.File(h5) as f:
        n = f["input"].shape[0]
        assert f["input"].shape[1:] == (1, 21, 21) and f["label"].shape == f["input"].shape
        assert f["input"].chunks is not None and n > 0 and n % 8 == 0  # 4 rotations x 2 flips
        assert not np.array_equal(f["input"][0], f["label"][0])
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--h5", str(h5), "--val-dir", "none", "--depth", "3",
                 "--width", "4", "--batch-size", "4", "--steps", "3", "--patch", "21", "--scales", "2", "3",
                 "--threads", "1"]) == 0
    assert (run / "last.safetensors").exists()
    capsys.readouterr()


def test_reads_pytorch_vdsr_and_notes_layouts_and_rejects_bad(tmp_path: Path) -> None:
    import h5py

    from vdsr.train.data import H5Patches

    p = tmp_path / "pv.h5"
    with h5py.File(p, "w") as f:
        f["data"] = np.random.rand(10, 1, 41, 41).astype(np.float32)
        f["label"] = np.random.rand(10, 1, 41, 41).astype(np.float32)
    x, y = H5Patches(p).batch(4)
    assert x.shape == (4, 1, 41, 41)
    p2 = tmp_path / "notes.h5"
    with h5py.File(p2, "w") as f:
        f["input"] = np.random.rand(6, 41, 41, 3).astype(np.float32)
        f["label"] = np.random.rand(6, 41, 41, 3).astype(np.float32)
    x, _ = H5Patches(p2).batch(2)
    assert x.shape == (2, 3, 41, 41)
    cases = {
        "keys": {"foo": np.zeros((2, 1, 4, 4), np.float32)},
        "shape": {"input": np.zeros((2, 4, 4), np.float32), "label": np.zeros((2, 4, 4), np.float32)},
        "dtype": {"input": np.zeros((2, 1, 4, 4), np.uint8), "label": np.zeros((2, 1, 4, 4), np.uint8)},
        "mismatch": {"input": np.zeros((2, 1, 4, 4), np.float32), "label": np.zeros((3, 1, 4, 4), np.float32)},
    }
    for name, content in cases.items():
        bad = tmp_path / f"{name}.h5"
        with h5py.File(bad, "w") as f:
            for k, v in content.items():
                f[k] = v
        with pytest.raises(DataError, match=f"{name}.h5"):
            H5Patches(bad)
    noth5 = tmp_path / "x.h5"
    noth5.write_bytes(b"nope")
    with pytest.raises(DataError, match="not an HDF5 file"):
        H5Patches(noth5)


def test_train_cli_errors(tmp_path: Path, train_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--resume", str(tmp_path / "nowhere")])
    assert code == 1 and "not a training run folder" in capsys.readouterr().err
    empty = tmp_path / "e"
    empty.mkdir()
    code = main(["train", "--run-dir", str(tmp_path / "r"), "--train-dirs", str(empty), "--val-dir", "none"])
    assert code == 1 and "no images found" in capsys.readouterr().err
    assert os.environ.get("WORLD_SIZE") in (None, "1")


def test_optimizer_defaults_follow_the_paper() -> None:
    from vdsr.train.loop import make_optimizer

    model = torch.nn.Linear(2, 2)
    sgd = make_optimizer(TrainConfig(optimizer="sgd", learning_rate=0.1, val_dir=None), model)
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["weight_decay"] == 1e-4
    sgd0 = make_optimizer(TrainConfig(optimizer="sgd", weight_decay=0.0, val_dir=None), model)
    assert sgd0.param_groups[0]["weight_decay"] == 0.0
    adam = make_optimizer(TrainConfig(val_dir=None), model)
    assert adam.param_groups[0]["weight_decay"] == 0.0 and adam.param_groups[0]["lr"] == 1e-4


def test_last_weights_carry_their_own_validation(tmp_path: Path, train_dir: Path) -> None:
    """``last.safetensors`` records the last step's validation, ``best`` the best step's."""
    import csv

    from vdsr.weights import read_metadata

    val = tmp_path / "val"
    val.mkdir()
    write_png(val / "v.png", random_rgb(40, 44, seed=9))
    run = tmp_path / "r"
    args = tiny_args(train_dir, run, 30, every=10)
    args[args.index("--val-dir") + 1] = str(val)
    assert main([*args, "--val-every", "10", "--scales", "2", "--learning-rate", "3e-2"]) == 0
    lines = (run / "metrics.csv").read_text().splitlines()
    rows = [r for r in csv.DictReader(lines) if r["val_psnr_mean"]]
    assert [int(r["step"]) for r in rows] == [10, 20, 30]
    last, best = read_metadata(run / "last.safetensors"), read_metadata(run / "best.safetensors")
    assert last.metrics["val_psnr_x2"] == pytest.approx(float(rows[-1]["val_psnr_x2"]))
    top = max(rows, key=lambda r: float(r["val_psnr_mean"]))
    assert best.metrics["val_psnr_x2"] == pytest.approx(float(top["val_psnr_x2"]))


def test_patch_sources_declare_device_cutting_and_share_the_tensor_feed(tmp_path: Path) -> None:
    """PatchSource: the trainer asks ``cuts_on_device`` (not ``hasattr``); a source that cannot
    cut on the device still serves ``batch_tensors`` by copying its host batch."""
    import h5py

    from vdsr.train.data import H5Patches, PatchSampler

    assert PatchSampler.cuts_on_device and not H5Patches.cuts_on_device
    p = tmp_path / "p.h5"
    with h5py.File(p, "w") as f:
        f["input"] = np.random.rand(10, 1, 21, 21).astype(np.float32)
        f["label"] = np.random.rand(10, 1, 21, 21).astype(np.float32)
    a, b = H5Patches(p, seed=2), H5Patches(p, seed=2)
    x, y = a.batch(6, slice(1, 4))
    xt, yt = b.batch_tensors(6, slice(1, 4), torch.device("cpu"))
    assert np.array_equal(x, xt.numpy()) and np.array_equal(y, yt.numpy()) and a.state == b.state
    cfg = TrainConfig(run_dir=str(tmp_path / "r"), h5=str(p), depth=3, width=4, patch=21,
                      batch_size=4, steps=2, val_dir=None, scales=[2], threads=1)
    trainer = Trainer(cfg)
    assert isinstance(trainer.sampler, H5Patches) and not trainer.device_feed
    trainer.device_feed = True  # what a GPU run would ask of it: the copied host batch
    trainer.fit()
    assert (tmp_path / "r" / "last.safetensors").exists()


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


def test_the_trainer_leaves_process_state_alone_and_configure_process_sets_it(tmp_path: Path) -> None:
    """Issue 24: Trainer.__init__ set torch's threads and the global seeds; now building one
    changes nothing process-wide (its model still starts from ``seed``), and
    ``configure_process`` is the one place that applies them."""
    import random

    from vdsr.train import configure_process

    threads, torch_rng, python_rng = torch.get_num_threads(), torch.get_rng_state(), random.getstate()
    cfg = TrainConfig(run_dir=str(tmp_path / "r"), depth=3, width=4, patch=21, batch_size=2, steps=1,
                      val_dir=None, scales=[2], threads=threads + 1, seed=7)
    a = Trainer(cfg, sampler=_NaNSampler())
    b = Trainer(cfg, sampler=_NaNSampler())
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), torch_rng) and random.getstate() == python_rng
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))
    try:
        configure_process(cfg)
        assert torch.get_num_threads() == threads + 1
        seeded = torch.get_rng_state()
        torch.manual_seed(7)
        assert torch.equal(seeded, torch.get_rng_state())
    finally:
        torch.set_num_threads(threads)


def test_train_config_refuses_wrong_types_and_values_with_the_field_names() -> None:
    """Issue 23, item 11 (library side): wrong types gave TypeError/ValueError from deep inside;
    now one InvalidTrainConfig lists every field that is wrong."""
    from vdsr.errors import InvalidTrainConfig

    with pytest.raises(InvalidTrainConfig) as info:
        TrainConfig(depth="4", steps="many", bias=1, val_dir=None)  # type: ignore[arg-type]
    assert list(info.value.problems) == ["depth", "bias", "steps"]  # in the order of the fields
    assert "depth must be an integer, got '4'" in str(info.value)
    with pytest.raises(InvalidTrainConfig) as info:
        TrainConfig(scales=[], downscales=[0.0], batch_size=0, val_dir=None)
    assert list(info.value.problems) == ["scales", "downscales", "batch_size"]
    with pytest.raises(InvalidTrainConfig, match="patch size 5 is too small for scale 4"):
        TrainConfig(patch=5, val_dir=None)
    # what JSON and people write for numbers is taken as the field keeps it
    config = TrainConfig(learning_rate=1, scales=(2, 3), val_dir="none")  # type: ignore[arg-type]
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.scales == [2, 3] and config.val_dir is None


def test_inputs_are_checked_before_any_data_is_loaded(tmp_path: Path, train_dir: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Rough edges of issue 23: --val-dir was checked only after the training data (1.5 GB by
    default) had been loaded, the failed start left config.json behind, and the default
    ../shared/datasets/T91 missing (run from outside the repository) gave no hint about
    --train-dirs. Now every input is checked first, nothing is written, and the error says
    which option sets it."""
    import vdsr.train.loop

    def no_loading(*a: object, **k: object) -> None:
        raise AssertionError("training data loaded before the inputs were checked")

    monkeypatch.setattr(vdsr.train.loop, "degraded_images", no_loading)
    run = tmp_path / "run"
    args = tiny_args(train_dir, run, 4)
    args[args.index("--val-dir") + 1] = str(tmp_path / "nowhere")
    _one_error_line(capsys, main(args), "nowhere: no such file or directory", "--val-dir DIR", "--val-dir none")
    assert not run.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    args[args.index("--val-dir") + 1] = str(empty)
    _one_error_line(capsys, main(args), f"no images found in {empty}", "--val-dir")
    args[args.index("--train-dirs") + 1] = str(empty)
    _one_error_line(capsys, main(args), f"no images found in {empty}", "--train-dirs")
    assert not run.exists()
    monkeypatch.chdir(tmp_path)  # outside the repository: ../shared is not there
    _one_error_line(capsys, main(["train", "--run-dir", str(run)]),
                    "../shared/datasets/T91: no such file or directory (the default, relative to the "
                    "current folder): choose the training images with --train-dirs")
    assert not run.exists()
