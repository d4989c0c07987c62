"""vdsr.train.process: how this process trains: what ``--precision auto`` resolves to on each CPU
class and on CUDA, recorded as resolved in config.json, the checkpoint and the weights' recipe;
``--compile`` is a setting of the process, not of the recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import random_rgb, write_png
from vdsr.cli import main
from vdsr.errors import InvalidArgument, VDSRError
from vdsr.train import TrainConfig
from vdsr.train.process import resolve_train_precision
from vdsr.weights import read_metadata


# Two images, not the three of conftest's fixture of the same name, which this one replaces here.
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


@pytest.mark.parametrize("features, auto", [
    ("none", "fp32"), ("avx2", "fp32"), ("avx2,vnni", "fp32"), ("avx2,avx512", "fp32"),
    ("avx2,avx512,vnni", "fp32"), ("avx2,avx512,vnni,bf16", "bf16"), ("amx", "bf16"),
    ("avx2,avx512,vnni,bf16,amx", "bf16"),
])
def test_train_precision_auto_on_each_cpu_class(features: str, auto: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22, item 4: bf16 autocast with channels_last where the CPU has AVX512_BF16 or AMX
    (measured faster: docs/precision.md), fp32 with NCHW elsewhere; CUDA is bf16 on any CPU."""
    from vdsr.train.process import memory_format

    monkeypatch.setenv("VDSR_CPU_FEATURES", features)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_train_precision("auto", cpu) == auto
    assert memory_format(cpu, auto) == (torch.channels_last if auto == "bf16" else torch.contiguous_format)
    assert resolve_train_precision("auto", cuda) == "bf16"  # as the shipped model was trained
    assert resolve_train_precision("fp32", cpu) == "fp32"  # asked for: never changed


def test_train_precision_rule() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_train_precision("auto", cuda) == "bf16"  # as the shipped model was trained
    assert resolve_train_precision("fp16", cuda) == "fp16"
    assert resolve_train_precision("bf16", cpu) == "bf16"
    with pytest.raises(InvalidArgument, match="tf32"):
        resolve_train_precision("tf32", cpu)
    with pytest.raises(InvalidArgument, match="unknown training precision"):
        resolve_train_precision("fp8", cpu)
    with pytest.raises(VDSRError, match="unknown precision"):
        TrainConfig(precision="half")


def test_precision_reaches_config_checkpoint_and_recipe(tmp_path: Path, train_dir: Path,
                                                        caplog: pytest.LogCaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """auto is recorded as what it resolved to; bf16 autocast trains a few finite steps on CPU."""
    auto_run, bf16_run = tmp_path / "auto", tmp_path / "bf16"
    monkeypatch.setenv("VDSR_CPU_FEATURES", "avx2")  # a CPU without native bf16: auto is fp32
    assert main(_args(train_dir, auto_run)) == 0
    assert json.loads((auto_run / "config.json").read_text())["precision"] == "fp32"
    assert read_metadata(auto_run / "last.safetensors").recipe["precision"] == "fp32"
    auto_bf16 = tmp_path / "auto_bf16"
    monkeypatch.setenv("VDSR_CPU_FEATURES", "avx2,avx512,vnni,bf16")  # with it: bf16, recorded
    assert main(_args(train_dir, auto_bf16)) == 0
    assert json.loads((auto_bf16 / "config.json").read_text())["precision"] == "bf16"
    assert read_metadata(auto_bf16 / "last.safetensors").recipe["precision"] == "bf16"

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


def test_compile_is_a_resume_override_not_recipe(tmp_path: Path, train_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VDSR_CPU_FEATURES", "avx2")  # auto is fp32 on this CPU class
    run = tmp_path / "r"
    assert main(_args(train_dir, run, steps=2)) == 0
    assert json.loads((run / "config.json").read_text())["compile"] is False
    from vdsr.train.runfolder import RunFolder

    config, _ = RunFolder(run).resume({"steps": 3, "compile": True})
    assert config.compile is True and config.precision == "fp32"
    with pytest.raises(InvalidArgument, match="precision"):
        RunFolder(run).resume({"precision": "bf16"})
