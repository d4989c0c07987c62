"""Whole-process CPU benchmark: what a user runs, `vdsr upscale`, against the eager fp32 baseline.

    python benchmarks/cli_speed.py [--quick] [--out benchmarks/results_cli.json]
    python benchmarks/report.py benchmarks/results_cli.json      # the BENCHMARKS.md table

Each row is a whole process (Python start, imports, weights, graph build, decode, upscale,
encode): median wall seconds over its runs, the largest peak RSS (``ru_maxrss`` of the child),
and accuracy: the mean Y-PSNR (shave 2) of its outputs against the HR originals, and its
difference from the baseline's (0 = the same model quality). Workloads:

* ``set5``: the five Set5 images, MATLAB-bicubic-downscaled x2 (8-bit RGB PNG), upscaled x2 in
  one process (one folder);
* ``1024``: one 1024x1024 RGB photo (scikit-image's astronaut, resized) upscaled x2 to 2048².

The CPU's name and features (from /proc/cpuinfo) and the package versions are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SET5 = ROOT.parent / "shared" / "datasets" / "Set5"
FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_info() -> dict[str, Any]:
    name, flags = platform.processor() or "unknown", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import onnxruntime
    import torch

    return {"cpu": name, "cores": os.cpu_count(), "features": [f for f in FEATURES if f in flags],
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version()}


def make_workloads(tmp: Path) -> dict[str, tuple[list[Path], list[np.ndarray]]]:
    from skimage import data

    from vdsr.resize import imresize, modcrop

    loads: dict[str, tuple[list[Path], list[np.ndarray]]] = {}
    (tmp / "set5").mkdir()
    files, hrs = [], []
    for src in sorted(SET5.glob("*.png")):
        hr = modcrop(np.asarray(Image.open(src).convert("RGB")), 2)
        lr = np.clip(np.round(imresize(hr.astype(np.float64), 0.5)), 0, 255).astype(np.uint8)
        files.append(tmp / "set5" / src.name)
        Image.fromarray(lr).save(files[-1])
        hrs.append(hr)
    loads["set5"] = (files, hrs)
    (tmp / "1024").mkdir()
    photo = Image.fromarray(data.astronaut()).resize((1024, 1024), Image.Resampling.LANCZOS)
    path = tmp / "1024" / "astronaut1024.png"
    photo.save(path)
    loads["1024"] = ([path], [])
    return loads


def y_psnr(a: np.ndarray, b: np.ndarray, shave: int = 2) -> float:
    from vdsr.color import rgb2y
    from vdsr.metrics import psnr

    return psnr(rgb2y(a / 255.0) * 255, rgb2y(b / 255.0) * 255, border=shave)


def measure_row(method: str, files: list[Path], out: Path, runs: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    if method == "baseline":
        cmd = [sys.executable, str(ROOT / "benchmarks" / "baseline_upscale.py"), str(out), *map(str, files)]
    else:
        target = out if len(files) > 1 else out / f"{files[0].stem}_x2.png"
        cmd = [sys.executable, "-m", "vdsr", "upscale", *map(str, files), "-s", "2", "-o", str(target),
               "--overwrite", "--backend", method]
    times, peaks = [], []
    for _ in range(runs):
        # each run in its own measuring process, so its ru_maxrss is its own
        probe = subprocess.run(
            [sys.executable, "-c", "import json,sys,resource,subprocess,time;"
             "t=time.perf_counter();p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
             "s=time.perf_counter()-t;"
             "print(json.dumps({'s':s,'rc':p.returncode,'err':p.stderr[-400:],"
             "'rss':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))", *cmd],
            capture_output=True, text=True, check=True)
        r = json.loads(probe.stdout)
        if r["rc"] != 0:
            raise RuntimeError(f"{method}: {r['err']}")
        times.append(r["s"])
        peaks.append(r["rss"])
    return {"seconds": statistics.median(times), "times": times, "peak_rss_mb": max(peaks)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one run each, Set5 only")
    parser.add_argument("--methods", nargs="+", default=["baseline", "torch", "onnxruntime", "int8"])
    parser.add_argument("--out", default="benchmarks/results_cli.json")
    a = parser.parse_args()
    results: dict[str, Any] = {"machine": cpu_info(), "command": " ".join(["python", *sys.argv]),
                               "rows": {}}
    with tempfile.TemporaryDirectory(prefix="vdsr-bench-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["VDSR_CACHE_DIR"] = str(tmp / "cache")  # warm-up below fills it (int8: calibration)
        loads = make_workloads(tmp)
        for method in a.methods:  # build the cached graphs once, untimed
            if method != "baseline":
                measure_row(method, loads["set5"][0][:1], tmp / "warm" / method, 1)
        for workload in ["set5"] if a.quick else ["set5", "1024"]:
            files, hrs = loads[workload]
            runs = 1 if a.quick or workload == "1024" else 3
            base_psnr = None
            for method in a.methods:
                out = tmp / "out" / workload / method
                row = measure_row(method, files, out, runs)
                if hrs:
                    outs = [np.asarray(Image.open(out / f"{f.stem}_x2.png").convert("RGB")) for f in files]
                    row["y_psnr"] = float(np.mean([y_psnr(h.astype(np.float64), o.astype(np.float64))
                                                   for h, o in zip(hrs, outs, strict=True)]))
                    base_psnr = row["y_psnr"] if method == "baseline" else base_psnr
                    if base_psnr is not None:
                        row["db_vs_baseline"] = row["y_psnr"] - base_psnr
                results["rows"][f"{workload}/{method}"] = row
                print(f"{workload:>5} {method:<12} {row['seconds']:7.2f} s  RSS {row['peak_rss_mb']:6.0f} MB"
                      + (f"  Y-PSNR {row['y_psnr']:.3f}" if "y_psnr" in row else ""), flush=True)
                Path(a.out).write_text(json.dumps(results, indent=2) + "\n")  # after every row


if __name__ == "__main__":
    main()
