"""vdsr.train.distributed: DDP via torchrun, gloo on CPU, 2 processes on loopback: the weights
equal single-process training with the same global batch and data order."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import random_rgb, write_png
from vdsr.weights import load_weights


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_process_ddp_equals_single_process(tmp_path: Path) -> None:
    data = tmp_path / "hr"
    data.mkdir()
    for i in range(3):
        write_png(data / f"{i}.png", random_rgb(50, 56, seed=i))
    common = ["train", "--train-dirs", str(data), "--val-dir", "none", "--depth", "4", "--width", "8",
              "--batch-size", "8", "--steps", "12", "--patch", "21", "--downscales", "1.0",
              "--learning-rate", "1e-3", "--checkpoint-every", "6", "--threads", "1", "--seed", "5",
              "--device", "cpu", "--precision", "fp32"]  # bf16 (auto on some CPUs) rounds each half
    # batch's gradient sums differently from the whole batch's: equal only to bf16's rounding
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "vdsr", *common, "--run-dir", str(single)],
                   check=True, capture_output=True, timeout=300)
    ddp = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         "-m", "vdsr", *common, "--run-dir", str(ddp)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = load_weights(single / "last.safetensors")[0], load_weights(ddp / "last.safetensors")[0]
    assert a.keys() == b.keys()  # plain module keys: no "module." prefix
    assert not any(k.startswith("module.") for k in b)
    assert not any(k.startswith("vdsr.module.") for k in load_file(str(ddp / "last.safetensors")))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-5, diff
    moved = max(float((a[k]).abs().max()) for k in a if k.startswith("output"))
    assert moved > 0  # training changed the zero-initialised output layer
    # Only rank 0 wrote: one metrics file, no duplicate rows.
    rows = (ddp / "metrics.csv").read_text().splitlines()
    steps = [r.split(",")[0] for r in rows[1:]]
    assert len(steps) == len(set(steps))


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_node_rendezvous_on_loopback(tmp_path: Path) -> None:
    """The documented multi-machine command, with both 'machines' on 127.0.0.1: two torchrun
    launchers, --nnodes 2 and distinct --node_rank, meet at one master address."""
    data = tmp_path / "hr"
    data.mkdir()
    write_png(data / "a.png", random_rgb(48, 48))
    port = str(_free_port())
    run = tmp_path / "multi"
    args = ["train", "--train-dirs", str(data), "--val-dir", "none", "--depth", "3", "--width", "4",
            "--batch-size", "4", "--steps", "4", "--patch", "21", "--downscales", "1.0", "--threads", "1",
            "--device", "cpu", "--run-dir", str(run)]
    launchers = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                          "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
                          "-m", "vdsr", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in launchers]
    finally:
        for p in launchers:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in launchers), outputs
    assert (run / "last.safetensors").exists()
