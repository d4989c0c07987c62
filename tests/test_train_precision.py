"""``vdsr train --precision`` and ``--compile``: the choice reaches config.json, the checkpoint and
the weights' recipe; bf16 trains on CPU; a compiled step follows the eager loss trajectory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import random_rgb, write_png
from vdsr.cli import main
from vdsr.errors import InvalidArgument, VDSRError
from vdsr.precision import resolve_train_precision
from vdsr.train import TrainConfig, Trainer
from vdsr.weights import read_metadata


@pytest.fixture
def train_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hr"
    d.mkdir()
    for i in range(2):
        write_png(d / f"{i}.png", random_rgb(56 + 5 * i, 60, seed=i))
    return d


def _args(train_dir: Path, run: Path, steps: int = 4) -> list[str]:
    return ["train", "--run-dir", str(run), "--train-dirs", str(train_dir), "--val-dir", "none",
            "--depth", "3", "--width", "4", "--batch-size", "4", "--steps", str(steps),
            "--patch", "21", "--downscales", "1.0", "--scales", "2", "--learning-rate", "1e-3",
            "--checkpoint-every", "2", "--log-every", "1", "--threads", "1", "--seed", "1"]


def test_train_precision_rule() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_train_precision("auto", cpu) == "fp32"
    assert resolve_train_precision("auto", cuda) == "bf16"  # as the shipped model was trained
    assert resolve_train_precision("fp16", cuda) == "fp16"
    assert resolve_train_precision("bf16", cpu) == "bf16"
    with pytest.raises(InvalidArgument, match="tf32"):
        resolve_train_precision("tf32", cpu)
    with pytest.raises(InvalidArgument, match="unknown precision"):
        resolve_train_precision("fp8", cpu)
    with pytest.raises(VDSRError, match="unknown precision"):
        TrainConfig(precision="half")


def test_precision_reaches_config_checkpoint_and_recipe(tmp_path: Path, train_dir: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """auto is recorded as what it resolved to; bf16 autocast trains a few finite steps on CPU."""
    auto_run, bf16_run = tmp_path / "auto", tmp_path / "bf16"
    assert main(_args(train_dir, auto_run)) == 0
    assert json.loads((auto_run / "config.json").read_text())["precision"] == "fp32"
    assert read_metadata(auto_run / "last.safetensors").recipe["precision"] == "fp32"

    with caplog.at_level("INFO", logger="vdsr.train"):
        assert main([*_args(train_dir, bf16_run), "--precision", "bf16"]) == 0
    assert "training in bf16 on cpu" in caplog.text
    assert json.loads((bf16_run / "config.json").read_text())["precision"] == "bf16"
    recipe = read_metadata(bf16_run / "last.safetensors").recipe
    assert recipe["precision"] == "bf16"
    assert "compile" not in recipe  # how it ran, not what it computed
    losses = [float(line.split(",")[1]) for line in (bf16_run / "metrics.csv").read_text().splitlines()[1:]]
    assert len(losses) == 4 and all(np.isfinite(losses))
    # bf16 arithmetic really ran: the weights differ from the fp32 run of the same seed
    from safetensors.torch import load_file

    a, b = load_file(str(auto_run / "last.safetensors")), load_file(str(bf16_run / "last.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


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


def test_compile_is_a_resume_override_not_recipe(tmp_path: Path, train_dir: Path) -> None:
    run = tmp_path / "r"
    assert main(_args(train_dir, run, steps=2)) == 0
    assert json.loads((run / "config.json").read_text())["compile"] is False
    from vdsr.train.runfolder import RunFolder

    config, _ = RunFolder(run).resume({"steps": 3, "compile": True})
    assert config.compile is True and config.precision == "fp32"
    with pytest.raises(InvalidArgument, match="precision"):
        RunFolder(run).resume({"precision": "bf16"})
