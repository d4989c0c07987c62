"""The first run for new weights on a new machine: `vdsr upscale` with an empty cache.

    python benchmarks/first_run.py [--weights shipped official] [--runs 3] [--out benchmarks/results_first_run.json]
    python benchmarks/report.py benchmarks/results_first_run.json      # the BENCHMARKS.md table

That run checks the fast recipes for the weights (``vdsr.recipes``) and calibrates the int8
graphs (``vdsr.export``) before it upscales; both are cached, so every later run skips them. Each
row is a whole process on a fresh ``VDSR_CACHE_DIR``: wall seconds and peak RSS (``ru_maxrss``)
against issue 22's memory bound (450 MB + 3 bytes per output pixel), beside the same command once
the cache is warm. The workload is the 1024² photo of ``cli_speed.py`` upscaled x2 to 2048²;
the configurations are the defaults (OpenVINO installed) and ``--backend onnxruntime`` (what
``auto`` takes with the README's plain install). Medians over ``--runs`` (each its own fresh cache).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_speed import MEMORY_BOUND_MB, OFFICIAL_MAT, _run, command, cpu_info  # noqa: E402

CONFIGS = ("default", "auto, onnxruntime")  # rows of cli_speed.ROWS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", nargs="+", default=["shipped", "official"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results_first_run.json")
    a = parser.parse_args()
    results: dict[str, Any] = {"kind": "first_run", "machine": cpu_info(),
                               "command": " ".join(["python", *sys.argv]),
                               "memory_bound": "450 MB + 3 B per output pixel", "rows": {}}
    from PIL import Image
    from skimage import data

    with tempfile.TemporaryDirectory(prefix="vdsr-first-") as tmp_name:
        tmp = Path(tmp_name)
        photo = tmp / "astronaut_1024x1024.png"
        Image.fromarray(data.astronaut()).resize((1024, 1024), Image.Resampling.LANCZOS).save(photo)
        bound = MEMORY_BOUND_MB + 3 * 4 * 1024 * 1024 / 2**20
        for wname in a.weights:
            weights = None
            if wname == "official":
                from vdsr.weights.importers import convert

                weights = tmp / "official.safetensors"
                convert(OFFICIAL_MAT, weights)
            for method in CONFIGS:
                first, warm = [], []
                for i in range(a.runs):
                    env = {**os.environ, "VDSR_CACHE_DIR": str(tmp / "cache" / wname / method / str(i))}
                    out = tmp / "out" / wname / method
                    out.mkdir(parents=True, exist_ok=True)
                    for runs in (first, warm):  # empty cache, then the same cache warm
                        r = _run(command(method, [photo], out, weights), env)
                        if r["rc"] != 0:
                            raise RuntimeError(f"{wname} {method}: {r['err']}")
                        runs.append(r)
                row = {kind: {"seconds": statistics.median(x["s"] for x in runs),
                              "times": [x["s"] for x in runs],
                              "peak_rss_mb": max(x["rss"] for x in runs),
                              "said": runs[-1]["out"].strip().splitlines()[-1]}
                       for kind, runs in (("first", first), ("warm", warm))}
                row["memory_bound_mb"] = bound
                results["rows"][f"{wname}/{method}"] = row
                print(f"{wname:9s} {method:18s} first {row['first']['seconds']:6.2f} s "
                      f"{row['first']['peak_rss_mb']:5.0f} MB; warm {row['warm']['seconds']:6.2f} s "
                      f"{row['warm']['peak_rss_mb']:5.0f} MB (bound {bound:.0f}); {row['first']['said']}", flush=True)
                Path(a.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
