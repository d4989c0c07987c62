"""`vdsr train`'s step on a CPU: fp32 against bf16 autocast + channels_last (issue 22, item 4).

The real step (``Trainer.next_batch`` + ``train_step`` + the scheduler, loss read back every step
as on a CPU) of the default model (20 layers, 64 channels), batch 16, 41x41 patches, in the four
combinations of precision and memory format. The variants run interleaved, a few steps each per
round, so load from other jobs on a shared machine falls on all of them alike; the median step
time of each is reported with the ratio to fp32 (NCHW, the old CPU rule), and the load average
before and after.

    python benchmarks/train_cpu_precision.py --rounds 7 --steps 3 --json benchmarks/results_train_cpu.json
    python benchmarks/train_cpu_precision.py --report benchmarks/results_train_cpu.json   # markdown
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vdsr.cpu import cpu_features, cpu_name
from vdsr.train import TrainConfig, Trainer, configure_process
from vdsr.train.data import DegradedImage, PatchSampler

VARIANTS = {  # name: (precision, memory format)
    "fp32": ("fp32", torch.contiguous_format),        # the fp32 rule (and the old CPU auto)
    "bf16_channels_last": ("bf16", torch.channels_last),  # the bf16 rule
    "fp32_channels_last": ("fp32", torch.channels_last),
    "bf16": ("bf16", torch.contiguous_format),
}


def trainer(name: str, batch: int, folder: Path) -> Trainer:
    precision, layout = VARIANTS[name]
    rng = np.random.default_rng(0)
    images = [DegradedImage(rng.random((1, 128, 128), dtype=np.float32),
                            rng.random((1, 128, 128), dtype=np.float32), 2) for _ in range(8)]
    config = TrainConfig(run_dir=str(folder / name), val_dir=None, batch_size=batch, steps=10**6,
                         precision=precision, device="cpu")
    t = Trainer(config, sampler=PatchSampler(images, 41, seed=0))
    t.memory_format = layout
    t.model.to(memory_format=layout)
    return t


def step(t: Trainer) -> None:
    x, y = t.next_batch()
    float(t.train_step(x, y))
    t.scheduler.step()


def report(path: str) -> str:
    """The measurement in ``path`` as the markdown table of docs/precision.md."""
    d = json.loads(Path(path).read_text())
    rows = [f"{d['cpu']} ({', '.join(d['features'])}), {d['threads']} threads, torch {d['torch']}; "
            f"{d['model']}, batch {d['batch']}, {d['patch']}x{d['patch']}; median of "
            f"{d['rounds'] * d['steps_per_round']} interleaved steps each; load average "
            f"{d['load_average_before'][0]:.1f} before, {d['load_average_after'][0]:.1f} after",
            "", "| variant | s per step | steps/s | x fp32 |", "|---|---|---|---|"]
    for name in VARIANTS:
        rows.append(f"| {name} | {d['median_s_per_step'][name]:.3f} | {d['steps_per_s'][name]:.3f} "
                    f"| {d['speed_vs_fp32'][name]:.2f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3, help="steps of each variant per round")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json")
    ap.add_argument("--report", metavar="JSON", help="print the table of a measurement and stop")
    args = ap.parse_args()
    if args.report:
        print(report(args.report))
        return
    configure_process(TrainConfig(val_dir=None))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: trainer(name, args.batch, Path(tmp)) for name in VARIANTS}
        for t in trainers.values():  # warm-up: oneDNN picks its kernels
            step(t)
            step(t)
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name, t in trainers.items():
                for _ in range(args.steps):
                    start = time.perf_counter()
                    step(t)
                    times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(v) for name, v in times.items()}
    result = {
        "cpu": cpu_name(), "features": cpu_features().names(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "batch": args.batch,
        "patch": 41, "model": "depth 20, width 64", "rounds": args.rounds, "steps_per_round": args.steps,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "median_s_per_step": median,
        "steps_per_s": {name: 1 / s for name, s in median.items()},
        "speed_vs_fp32": {name: median["fp32"] / s for name, s in median.items()},
        "times": times,
    }
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(json.dumps({k: result[k] for k in ("cpu", "features", "threads", "load_average_before",
                                             "load_average_after", "steps_per_s", "speed_vs_fp32")}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
