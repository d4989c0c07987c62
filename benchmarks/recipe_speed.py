"""The network alone, per recipe and runtime, on one tile: what orders ``auto``'s candidates.

    python benchmarks/recipe_speed.py [--size 384] [--rounds 5] [--out benchmarks/results_recipe_speed.json]

Each backend runs the shipped 20-layer network on a ``size``² Y tile (the default tile, the largest
network input of ``vdsr upscale``); the rows are interleaved round by round and the median is
reported as seconds and effective GFLOP/s (the direct convolution's FLOPs / seconds). The CPU's
name, features and class are recorded; a backend that cannot run here is listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vdsr.backends import create_backend  # noqa: E402
from vdsr.cpu import cpu_features, cpu_name  # noqa: E402
from vdsr.errors import VDSRError  # noqa: E402
from vdsr.nn.model import flops_per_pixel  # noqa: E402
from vdsr.weights import load_model  # noqa: E402

PAIRS = [("fp32", "onnxruntime"), ("fp32", "openvino"), ("fp32", "torch"), ("int8", "openvino"),
         ("int8", "onnxruntime"), ("mixed", "openvino"), ("mixed", "onnxruntime"), ("bf16", "openvino"),
         ("bf16-edge", "openvino"), ("bf16", "torch"), ("bf16-edge", "torch")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results_recipe_speed.json")
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    model, _ = load_model()
    x = torch.rand(1, 1, a.size, a.size)
    flops = flops_per_pixel(model) * a.size * a.size
    backends: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for recipe, runtime in PAIRS:
        try:
            backend = create_backend(model, runtime, "cpu", recipe, a.threads)
            backend(x)  # warm up: first-call allocation and kernel choice
            backends[f"{recipe}/{runtime}"] = backend
        except VDSRError as exc:
            skipped[f"{recipe}/{runtime}"] = str(exc)
    times: dict[str, list[float]] = {k: [] for k in backends}
    for _ in range(a.rounds):
        for key, backend in backends.items():
            t = time.perf_counter()
            backend(x)
            times[key].append(time.perf_counter() - t)
    features = cpu_features()
    rows = {k: {"seconds": statistics.median(v), "gflops": flops / statistics.median(v) / 1e9, "times": v}
            for k, v in times.items()}
    body = {"machine": {"cpu": cpu_name(), "features": features.names(), "class": features.feature_class,
                        "torch": torch.__version__, "threads": a.threads},
            "command": " ".join(["python", *sys.argv]), "tile": a.size, "rows": rows, "skipped": skipped}
    Path(a.out).write_text(json.dumps(body, indent=2) + "\n")
    for key, row in sorted(rows.items(), key=lambda kv: kv[1]["seconds"]):
        print(f"{key:<22} {row['seconds']:.3f} s  {row['gflops']:6.0f} GFLOP/s")
    for key, why in skipped.items():
        print(f"{key:<22} skipped: {why}")


if __name__ == "__main__":
    main()
