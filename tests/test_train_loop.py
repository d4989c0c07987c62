"""vdsr.train.loop: the Trainer: optimiser steps, gradient clipping, validation, non-finite losses,
the bf16, fp16 and compiled steps, process-wide state left alone, and stops by signal (SIGINT,
SIGTERM, SIGKILL) at a step whose checkpoint resumes to the uninterrupted run's weights."""

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

from tests.conftest import _weights_equal, one_error_line, random_rgb, tiny_args, write_png
from vdsr.cli import main
from vdsr.errors import TrainingError
from vdsr.train import TrainConfig, Trainer
from vdsr.train.loop import clip_gradients
from vdsr.weights.checkpoints import load_checkpoint


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


def test_init_weights_of_another_architecture_stop_before_writing(
        tmp_path: Path, train_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import tiny_model
    from vdsr.weights import WeightsMetadata, save_weights

    model = tiny_model(depth=3)
    weights = tmp_path / "d3.safetensors"
    save_weights(weights, model.state_dict(), WeightsMetadata(config=model.config, source="test"))
    run = tmp_path / "run"
    one_error_line(capsys, main([*tiny_args(train_dir, run, 10), "--init-weights", str(weights)]),
                    str(weights), "weights of a model with depth 3; this run trains depth 4")
    assert not run.exists()


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


def test_body_trains_and_is_stored_in_metadata(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import random_rgb, tiny_args, write_png
    from vdsr.weights import read_metadata

    data = tmp_path / "hr"
    data.mkdir()
    write_png(data / "a.png", random_rgb(48, 48))
    run = tmp_path / "run"
    args = tiny_args(data, run, 2, every=2)
    args[args.index("--depth") + 1] = "5"  # 3 inner layers: a dense body of one block
    assert main([*args, "--body", "dense"]) == 0
    assert read_metadata(run / "last.safetensors").config.body == "dense"


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
    one_error_line(capsys, main(args), "nowhere: no such file or directory", "--val-dir DIR", "--val-dir none")
    assert not run.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    args[args.index("--val-dir") + 1] = str(empty)
    one_error_line(capsys, main(args), f"no images found in {empty}", "--val-dir")
    args[args.index("--train-dirs") + 1] = str(empty)
    one_error_line(capsys, main(args), f"no images found in {empty}", "--train-dirs")
    assert not run.exists()
    monkeypatch.chdir(tmp_path)  # outside the repository: ../shared is not there
    one_error_line(capsys, main(["train", "--run-dir", str(run)]),
                    "../shared/datasets/T91: no such file or directory (the default, relative to the "
                    "current folder): choose the training images with --train-dirs")
    assert not run.exists()


# -- precision and torch.compile -------------------------------------------------------------------

def test_fp16_training_uses_a_grad_scaler_and_checkpoints_it(tmp_path: Path) -> None:
    cfg = TrainConfig(run_dir=str(tmp_path / "r"), depth=3, width=4, patch=21, batch_size=2, steps=1,
                      val_dir=None, scales=[2], threads=1, precision="fp16", device="cpu")
    trainer = Trainer(cfg, sampler=_RandomSampler())
    assert trainer.scaler is not None and trainer.config.precision == "fp16"
    assert "scaler" in trainer.state_dict()
    assert Trainer(TrainConfig(run_dir=str(tmp_path / "s"), val_dir=None, device="cpu"),
                   sampler=_RandomSampler()).scaler is None


class _RandomSampler:
    """A patch source (no files) that hands out one fixed random batch: the loss changes only
    because the weights do."""

    cuts_on_device = False

    def __init__(self) -> None:
        self.state: dict[str, int] = {}

    def batch(self, n: int, part: object = None) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(0)
        y = rng.random((n, 1, 21, 21), dtype=np.float32)
        x = (y + 0.05 * rng.standard_normal(y.shape)).astype(np.float32)
        return x, y


def _trajectory(tmp_path: Path, name: str, compile: bool) -> list[float]:
    torch.manual_seed(0)
    cfg = TrainConfig(run_dir=str(tmp_path / name), depth=3, width=8, patch=21, batch_size=4,
                      steps=6, val_dir=None, scales=[2], threads=1, device="cpu", compile=compile,
                      learning_rate=1e-3, seed=5)
    trainer = Trainer(cfg, sampler=_RandomSampler())
    losses = []
    for _ in range(cfg.steps):
        x, y = trainer.next_batch()
        losses.append(float(trainer.train_step(x, y)))
        trainer.scheduler.step()
        trainer.step += 1
    return losses


@pytest.mark.slow  # compiling the step takes over a minute on 2 loaded CPU cores
def test_compiled_step_follows_the_eager_loss_trajectory(tmp_path: Path) -> None:
    """``--compile`` changes speed, not the arithmetic: same losses within float tolerance, and
    the loss check (which reads the returned loss) still sees every step's loss."""
    eager = _trajectory(tmp_path, "eager", compile=False)
    compiled = _trajectory(tmp_path, "compiled", compile=True)
    # the batch is fixed, so each new loss is the previous update at work: a wrong compiled
    # backward would bend the trajectory
    assert len(set(eager)) == len(eager)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-6)


class _LearnableSampler:
    """Batches whose residual a small network learns fast (a contrast change), fresh each step:
    the loss falls by more than half in 30 steps, so a bf16 path that trains wrongly (or not at
    all) cannot follow the fp32 curve."""

    cuts_on_device = False

    def __init__(self) -> None:
        self.state: dict[str, int] = {"k": 0}

    def batch(self, n: int, part: object = None) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.state["k"])
        self.state = {"k": self.state["k"] + 1}
        y = rng.random((n, 1, 21, 21), dtype=np.float32)
        return (0.5 * y + 0.25).astype(np.float32), y


def test_bf16_training_on_cpu_follows_the_fp32_loss_curve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22, item 4: the CPU bf16 path (autocast + channels_last, taken by ``auto`` on a CPU
    with AVX512_BF16) trains as fp32 does: over 30 logged steps its loss stays within 2% of the
    fp32 run's and within 5% of how far that loss falls (measured: 0.4% and 0.2%)."""
    import csv

    def curve(features: str, name: str) -> tuple[np.ndarray, Trainer]:
        monkeypatch.setenv("VDSR_CPU_FEATURES", features)
        cfg = TrainConfig(run_dir=str(tmp_path / name), depth=4, width=8, patch=21, batch_size=8,
                          steps=30, log_every=1, checkpoint_every=30, val_dir=None, scales=[2],
                          learning_rate=1e-2, seed=3, device="cpu")
        trainer = Trainer(cfg, sampler=_LearnableSampler())
        trainer.fit()
        rows = list(csv.DictReader((tmp_path / name / "metrics.csv").read_text().splitlines()))
        return np.array([float(r["train_loss"]) for r in rows]), trainer

    fp32, plain = curve("avx2", "fp32")
    bf16, fast = curve("avx2,avx512,vnni,bf16", "bf16")
    assert (plain.precision, plain.memory_format) == ("fp32", torch.contiguous_format)
    assert (fast.precision, fast.memory_format) == ("bf16", torch.channels_last)
    assert len(fp32) == len(bf16) == 30
    drop = fp32[0] - fp32[-1]
    assert drop > 0.5 * fp32[0]  # the curve has something to follow
    assert np.abs(bf16 - fp32).max() < 0.05 * drop
    assert (np.abs(bf16 - fp32) / fp32).max() < 0.02
    assert not np.array_equal(bf16, fp32)  # and it is bf16 arithmetic, not fp32 again
