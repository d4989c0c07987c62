"""Training in miniature on a CPU (issue 29): `vdsr train` from scratch for a fixed wall budget,
then `vdsr evaluate` on Set5 x2 against bicubic, as a new user would run them.

A regression anywhere in the training path (data scale, degradation, loss, optimiser, schedule,
checkpointing, the weights file) shows as a number here: the JSON keeps the model's and bicubic's
Set5 x2 Y-PSNR, the loss curve's ends, the steps, the machine and the commands.

    python benchmarks/train_mini.py --json benchmarks/results_train_mini.json   # about 10 minutes
    python benchmarks/train_mini.py --report benchmarks/results_train_mini.json  # markdown

The model is the paper's 20 layers at width 32 (a quarter of the paper's compute a step), trained
on T91 at x2 with Adam and a cosine schedule, in the precision `--precision auto` picks (bf16 on
CPUs with native bf16, else fp32: the JSON says which). The default 2800 steps took 445 s of
training (about 8 minutes in all, with the evaluation) on 2 cores of an AMX Xeon shared with other
jobs, and reached +3.25 dB over bicubic on Set5 x2 (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vdsr.cpu import cpu_features, cpu_name

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"


def _vdsr(*args: str) -> list[str]:
    return [sys.executable, "-m", "vdsr", *args]


def train_command(run_dir: Path, steps: int, threads: int) -> list[str]:
    """The `vdsr train` command of the miniature (printed into the JSON as run)."""
    return _vdsr("train", "--run-dir", str(run_dir), "--train-dirs", str(DATASETS / "T91"),
                 "--val-dir", "none", "--scales", "2", "--depth", "20", "--width", "32",
                 "--batch-size", "32", "--steps", str(steps), "--learning-rate", "1e-3",
                 "--schedule", "cosine", "--warmup-steps", "100", "--log-every", "50",
                 "--checkpoint-every", str(steps), "--seed", "0", "--device", "cpu",
                 "--threads", str(threads))


def run(steps: int, threads: int) -> dict[str, object]:
    """Train, evaluate, and return the record."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        train = train_command(run_dir, steps, threads)
        t0 = time.perf_counter()
        done = subprocess.run(train, check=True, cwd=ROOT, capture_output=True, text=True)
        said = done.stdout + done.stderr
        train_s = time.perf_counter() - t0
        # "training in bf16 on cpu": the precision --precision auto chose on this CPU
        precision = next((line.split()[2] for line in said.splitlines() if line.startswith("training in ")), "?")
        rows = (run_dir / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        loss_at = header.index("train_loss")
        losses = [float(r.split(",")[loss_at]) for r in rows[1:] if r.split(",")[loss_at]]
        scores = Path(tmp) / "set5.json"
        evaluate = _vdsr("evaluate", "--weights", str(run_dir / "last.safetensors"), "--device", "cpu",
                         "--data", str(DATASETS / "Set5"), "--scales", "2", "--json", str(scores))
        t1 = time.perf_counter()
        subprocess.run(evaluate, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        evaluate_s = time.perf_counter() - t1
        result = json.loads(scores.read_text())
    row = _set5_x2(result)
    feats = cpu_features()
    return {
        "machine": {"cpu": cpu_name(), "class": feats.feature_class, "features": feats.names(),
                    "threads": threads, "torch": torch.__version__, "python": platform.python_version()},
        "command": "python benchmarks/train_mini.py --json benchmarks/results_train_mini.json",
        "train_command": " ".join(["vdsr", *train[3:]]).replace(str(DATASETS), "../shared/datasets")
                         .replace(str(run_dir), "runs/mini"),
        "train_precision": precision,
        "steps": steps, "train_seconds": round(train_s, 1), "evaluate_seconds": round(evaluate_s, 1),
        "loss_first": losses[0], "loss_last": losses[-1],
        "set5_x2_psnr": row["psnr"], "set5_x2_bicubic_psnr": row["bicubic_psnr"],
        "gain_db": row["psnr"] - row["bicubic_psnr"], "evaluated_with": result["run"],
    }


def _set5_x2(result: dict) -> dict[str, float]:
    """The Set5 x2 row of `vdsr evaluate --json`."""
    for row in result["results"]:
        if int(row["scale"]) == 2:
            return {"psnr": float(row["psnr"]), "bicubic_psnr": float(row["bicubic_psnr"])}
    raise SystemExit(f"no x2 row in {result!r}")


def report(path: Path) -> str:
    """The markdown of a record: the machine, the command, one row."""
    r = json.loads(Path(path).read_text())
    m = r["machine"]
    return "\n".join([
        f"Machine: {m['cpu']}, CPU class `{m['class']}`, {m['threads']} threads; torch {m['torch']}.",
        "",
        f"It runs `{r['train_command']}`, then `vdsr evaluate` of the last weights on Set5 x2.",
        "",
        "| steps | precision | training s | loss first → last | Set5 ×2 model dB | bicubic dB | gain dB |",
        "|---|---|---|---|---|---|---|",
        f"| {r['steps']} | {r['train_precision']} | {r['train_seconds']:.0f} | {r['loss_first']:.2e} → "
        f"{r['loss_last']:.2e} | {r['set5_x2_psnr']:.2f} | {r['set5_x2_bicubic_psnr']:.2f} | {r['gain_db']:+.2f} |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2800)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="write the record here")
    parser.add_argument("--report", type=Path, help="print the markdown table of a record")
    args = parser.parse_args()
    if args.report:
        print(report(args.report))
        return
    record = run(args.steps, args.threads)
    text = json.dumps(record, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
