"""Ablation of the VDSR bodies (plain / residual / dense / inception) on super-resolution.

    python benchmarks/ablation.py train  [--runs DIR] [--steps N]   # trains every run, resumable
    python benchmarks/ablation.py report [--runs DIR]               # scores, speeds, curves, JSON

``train`` trains each body with the same data, seed, recipe and patch budget (multi-scale
×2/×3/×4 Y patches from the 291 images, Adam 3e-4 with value clip 0.1 and a cosine schedule,
batch 16), then trains a second seed for the two bodies with the best Set5 validation mean.
Runs that already finished are skipped and interrupted ones resumed, so the command can simply
be run again. ``report`` (run it while nothing else uses the CPU) scores each run's
``last.safetensors`` (the weights at the end of the budget: choosing "best" on Set5 would
favour Set5) on Set5 and Set14, times inference, and writes ``docs/ablation.json`` and
``docs/ablation_curves.png``; ``docs/ablation.md`` quotes them.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timing import median_time

BODIES = ["plain", "residual", "dense", "inception"]
SEEDS = [1, 2]
SHARED = Path("../shared/datasets")
RECIPE = ["--batch-size", "16", "--optimizer", "adam", "--learning-rate", "3e-4", "--clip", "0.1",
          "--schedule", "cosine", "--scales", "2", "3", "4", "--channels", "1"]


def _run_dir(runs: Path, body: str, seed: int) -> Path:
    return runs / f"{body}-s{seed}"


def _train_one(runs: Path, body: str, seed: int, steps: int) -> None:
    run = _run_dir(runs, body, seed)
    if (run / "last.safetensors").exists():
        return
    every = str(max(steps // 5, 1))
    if (run / "checkpoint.pt").exists():
        cmd = [sys.executable, "-m", "vdsr", "train", "--resume", str(run)]
    else:
        cmd = [sys.executable, "-m", "vdsr", "train", "--run-dir", str(run), "--body", body,
               "--seed", str(seed), "--steps", str(steps), "--val-every", every,
               "--checkpoint-every", every, "--log-every", "50", *RECIPE]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _val_mean(run: Path) -> float:
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    vals = [float(r["val_psnr_mean"]) for r in rows if r.get("val_psnr_mean")]
    return vals[-1]


def train(runs: Path, steps: int) -> None:
    for body in BODIES:
        _train_one(runs, body, SEEDS[0], steps)
    ranked = sorted(BODIES, key=lambda b: _val_mean(_run_dir(runs, b, SEEDS[0])), reverse=True)
    for body in ranked[:2]:
        _train_one(runs, body, SEEDS[1], steps)


def _speed(model: Any, backend: str, size: int = 256, repeats: int = 5) -> float:
    """Median seconds of one fp32 forward on a size×size Y image on this CPU.

    ``backend`` is ``torch`` (eager NCHW) or ``onnxruntime`` (the package's CPU default).
    """
    from vdsr.api import run_network

    x = np.random.default_rng(0).random((1, size, size)).astype(np.float32)
    with torch.inference_mode():
        return median_time(lambda: run_network(model, x, None, "cpu", backend), repeats)[0]


def _train_speed(model: Any, batch: int = 16, repeats: int = 5) -> float:
    """Patches/s of an Adam training step (41×41, eager fp32) on a copy of ``model``, this CPU."""
    from vdsr.nn.model import VDSR

    net = VDSR(model.config)
    net.load_state_dict(model.state_dict())
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-5)
    x, y = torch.rand(batch, 1, 41, 41), torch.rand(batch, 1, 41, 41)

    def step() -> None:
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return batch / median_time(step, repeats)[0]


def markdown_table(entries: list[dict[str, Any]]) -> str:
    """The ablation table (one row per run, then bicubic) in Markdown."""
    sets = [k for k in entries[0]["scores"] if not k.endswith("_bicubic")]
    head = ("| body | seed | params | MFLOP/px | train patches/s | 256² torch s | 256² ORT s | "
            + " | ".join(f"{d} ×{s}" for d in sets for s in (2, 3, 4)) + " |")
    lines = [head, "|" + "---|" * (7 + 3 * len(sets))]
    order = {b: i for i, b in enumerate(BODIES)}
    for e in sorted(entries, key=lambda e: (order[e["body"]], e["seed"])):
        cells = [f"{e['scores'][d][f'x{s}']:.2f}" for d in sets for s in (2, 3, 4)]
        lines.append(f"| {e['body']} | {e['seed']} | {e['params']:,} | {e['flops_per_pixel'] / 1e6:.3f} "
                     f"| {e['train_patches_per_s']:.1f} | {e['seconds_256_torch']:.2f} "
                     f"| {e['seconds_256_ort']:.2f} | " + " | ".join(cells) + " |")
    bic = [f"{entries[0]['scores'][d + '_bicubic'][f'x{s}']:.2f}" for d in sets for s in (2, 3, 4)]
    lines.append("| bicubic | | | | | | | " + " | ".join(bic) + " |")
    return "\n".join(lines)


def report(runs: Path, out_json: Path, out_png: Path, datasets: list[str]) -> None:
    from vdsr.evaluate import evaluate_folder
    from vdsr.nn.model import count_parameters, flops_per_pixel
    from vdsr.weights import load_model

    entries = []
    speeds: dict[str, dict[str, float]] = {}  # per body: the weights' values do not change speed
    for run in sorted(p for p in runs.iterdir() if (p / "last.safetensors").exists()):
        model, meta = load_model(run / "last.safetensors")
        model.eval()
        config = json.loads((run / "config.json").read_text())
        scores: dict[str, dict[str, float]] = {}
        for name in datasets:
            results = evaluate_folder(model, SHARED / name, [2, 3, 4], with_ssim=False)
            scores[name] = {f"x{r.scale}": r.psnr for r in results}
            scores[name + "_bicubic"] = {f"x{r.scale}": r.bicubic_psnr for r in results}
        rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
        if config["body"] not in speeds:
            speeds[config["body"]] = {"seconds_256_torch": _speed(model, "torch"),
                                      "seconds_256_ort": _speed(model, "onnxruntime"),
                                      "train_patches_per_s": _train_speed(model)}
        entries.append({
            "run": run.name, "body": config["body"], "seed": config["seed"],
            "steps": config["steps"], "patches": config["steps"] * config["batch_size"],
            "params": count_parameters(model), "flops_per_pixel": flops_per_pixel(model),
            **speeds[config["body"]], "scores": scores,
            "curve": [{k: float(v) for k, v in r.items() if v} for r in rows],
        })
        print(run.name, json.dumps(scores), flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__}
    out_json.write_text(json.dumps({"machine": machine, "recipe": RECIPE, "runs": entries},
                                   indent=1) + "\n")
    print(markdown_table(entries))

    plot_curves(entries, out_png)


def _curve_entries(runs: Path) -> list[dict[str, Any]]:
    entries = []
    for run in sorted(p for p in runs.iterdir() if (p / "metrics.csv").exists()):
        config = json.loads((run / "config.json").read_text())
        rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
        entries.append({"body": config["body"], "seed": config["seed"],
                        "curve": [{k: float(v) for k, v in r.items() if v} for r in rows]})
    return entries


def plot_curves(entries: list[dict[str, Any]], out_png: Path) -> None:
    """Training loss and Set5 validation PSNR per scale, one line per run (seed 2 dashed)."""
    from vdsr.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    colours = dict(zip(BODIES, ["C0", "C1", "C2", "C3"], strict=True))
    for e in entries:
        style = "-" if e["seed"] == SEEDS[0] else "--"
        label = f"{e['body']} (seed {e['seed']})"
        loss = [(r["step"], r["train_loss"]) for r in e["curve"] if "train_loss" in r]
        # smooth the noisy per-50-step loss with a running mean of 5 points
        ys = np.convolve([v for _, v in loss], np.ones(5) / 5, mode="valid")
        axes[0].plot([s for s, _ in loss][4:], ys, style, color=colours[e["body"]], label=label)
        for ax, scale in zip(axes[1:], (2, 3, 4), strict=True):
            pts = [(r["step"], r[f"val_psnr_x{scale}"]) for r in e["curve"]
                   if f"val_psnr_x{scale}" in r]
            ax.plot(*zip(*pts, strict=True), style, marker="o", ms=3, color=colours[e["body"]],
                    label=label)
    axes[0].set_yscale("log")
    axes[0].set_title("training MSE (running mean)")
    for ax, scale in zip(axes[1:], (2, 3, 4), strict=True):
        ax.set_title(f"Set5 validation Y-PSNR, x{scale}")
    for ax in axes:
        ax.set_xlabel("step (16 patches each)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["train", "report", "curves"])
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=Path("docs/ablation.json"))
    parser.add_argument("--png", type=Path, default=Path("docs/ablation_curves.png"))
    parser.add_argument("--datasets", nargs="+", default=["Set5", "Set14"])
    args = parser.parse_args()
    if args.what == "train":
        train(args.runs, args.steps)
    elif args.what == "curves":
        plot_curves(_curve_entries(args.runs), args.png)
    else:
        report(args.runs, args.json, args.png, args.datasets)


if __name__ == "__main__":
    main()
