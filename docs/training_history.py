"""The shipped model's whole training history, stage after stage, as one CSV and one picture.

    python docs/training_history.py x234:/work/runs/x234/metrics.csv:0:16 \
        x234ft:/work/runs/x234ft/metrics.csv:48000:16 ft3:/work/runs/ft3/metrics.csv:68800:16 \
        gpu1:/work/runs/gpu1/metrics.csv:164800:128 gpu2:/work/runs/gpu2/metrics.csv:6462400:128

Each argument is ``LABEL:METRICS_CSV:OFFSET:BATCH``: a run folder's ``metrics.csv``, the number of
training patches (of the whole history) its initial weights had seen, and its batch size; the
x axis is patches seen, since the stages used different batch sizes. Writes
``docs/training_history.csv`` (committed, so the picture can be redrawn after the run folders are
gone: ``python docs/training_history.py`` with no arguments) and ``docs/training_history.png``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from vdsr.plots import pyplot

DOCS = Path(__file__).resolve().parent
FIRST_BAR = {"x2": 36.5, "x3": 32.7, "x4": 30.4}  # the training issue's first bar on Set5
PAPER = {"x2": 37.53, "x3": 33.66, "x4": 31.35}  # VDSR's published Set5 numbers
FIELDS = ["stage", "batch", "patches", "train_loss", "learning_rate",
          "val_psnr_x2", "val_psnr_x3", "val_psnr_x4"]


def merge(specs: list[str]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for spec in specs:
        label, path, offset, batch = spec.rsplit(":", 3)
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                row = {k: r.get(k, "") for k in FIELDS}
                row.update(stage=label, batch=batch,
                           patches=str(int(offset) + int(r["step"]) * int(batch)))
                rows.append(row)
    return rows


def set5_bicubic() -> dict[str, float]:
    """Set5 bicubic Y-PSNR per scale, as `vdsr evaluate` measured it (docs/results)."""
    body = json.loads((DOCS / "results" / "default_rgb8.json").read_text())
    return {f"x{r['scale']}": r["bicubic_psnr"] for r in body["results"] if r["dataset"] == "Set5"}


def plot(rows: list[dict[str, str]], out: Path) -> None:
    plt = pyplot()
    bicubic = set5_bicubic()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    for stage in stages:
        pts = [(int(r["patches"]), float(r["train_loss"])) for r in rows
               if r["stage"] == stage and r["train_loss"]]
        ax1.plot(*zip(*pts, strict=True), lw=0.8, label=stage)
        ax2.axvline(pts[0][0], color="grey", lw=0.6, ls=":")
        ax2.annotate(stage, (pts[0][0], 1.0), xycoords=("data", "axes fraction"),
                     va="top", fontsize=8, color="grey")
    ax1.set(xscale="log", yscale="log", xlabel="training patches seen (41x41)",
            ylabel="training MSE (Y in [0,1])")
    ax1.legend(fontsize=8)
    for scale, colour in (("x2", "C0"), ("x3", "C1"), ("x4", "C2")):
        pts = [(int(r["patches"]), float(r[f"val_psnr_{scale}"])) for r in rows
               if r[f"val_psnr_{scale}"]]
        ax2.plot(*zip(*pts, strict=True), marker="o", ms=3, color=colour, label=f"Set5 {scale}")
        ax2.axhline(bicubic[scale], color=colour, lw=0.8, ls="--")
        ax2.axhline(FIRST_BAR[scale], color=colour, lw=0.8, ls=":")
        ax2.axhline(PAPER[scale], color=colour, lw=0.8, ls="-.")
    ax2.set(xscale="log", xlabel="training patches seen (41x41)",
            ylabel="Set5 validation Y-PSNR (dB)",
            title="dashed: bicubic, dotted: first bar, dash-dot: paper")
    ax2.legend(fontsize=8, loc="lower right")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle("Shipped default model: every training stage (Set5 validation)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    table = DOCS / "training_history.csv"
    if len(sys.argv) > 1:
        rows = merge(sys.argv[1:])
        with open(table, "w", newline="") as fh:
            writer = csv.DictWriter(fh, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    else:
        with open(table, newline="") as fh:
            rows = list(csv.DictReader(fh))
    plot(rows, DOCS / "training_history.png")


if __name__ == "__main__":
    main()
