"""Whole-process CPU benchmark: what a user runs, `vdsr upscale`, against an eager fp32 baseline.

    python benchmarks/cli_speed.py [--quick] [--weights shipped official] [--out benchmarks/results_cli.json]
    python benchmarks/report.py benchmarks/results_cli.json      # the BENCHMARKS.md table

Each row is a whole process (Python start, imports, weights, recipe choice, decode, upscale,
encode): the median wall seconds over its runs and the largest peak RSS (``ru_maxrss`` of the
child), with its accuracy: mean Y-PSNR (shave 2) of its outputs against the HR originals and the
difference from the baseline's. The recipe verdicts are cached before timing (a first run on a
new machine checks a recipe once: that cost is measured separately, ``first_run``).

Workloads: ``set5``: Set5's five images, MATLAB-bicubic-downscaled x2 (8-bit RGB PNG), upscaled
x2 in one process; ``1024``: a 1024² RGB photo (scikit-image's astronaut) to 2048²; ``12mp``: a
4000x3000 photo (the astronaut, resized) to 8000x6000, for time and the memory bound only (the
baseline would need ~40 GB there). The memory bound of issue 22 is 450 MB + 3 bytes per output
pixel. In the same run: the CPU's fp32/bf16 matmul rate (PyTorch, 4096²) and int8 rate (ONNX
Runtime MatMulInteger, 2048²), beside each row's effective GFLOP/s (the network's FLOPs per output
pixel x output pixels / whole-process seconds). The CPU's name, features and class are recorded.
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
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vdsr.constants import DEFAULT_TILE

ROOT = Path(__file__).resolve().parents[1]
SET5 = ROOT.parent / "shared" / "datasets" / "Set5"
OFFICIAL_MAT = ROOT.parent / "shared" / "reference" / "vdsr_official_matconvnet.mat"
FLOP_PER_PIXEL = 1_331_328  # vdsr.nn.model.flops_per_pixel of the 20-layer, 64-wide network
MEMORY_BOUND_MB = 450.0
# `vdsr upscale` options per row (the baseline is benchmarks/baseline_upscale.py)
ROWS: dict[str, list[str]] = {
    "default": [],
    "fp32": ["--precision", "fp32"],
    "int8": ["--precision", "int8"],
    "mixed": ["--precision", "mixed"],
    "bf16-edge": ["--precision", "bf16-edge"],
    "bf16": ["--precision", "bf16"],
    "torch fp32": ["--precision", "fp32", "--backend", "torch"],
    # what `auto` takes without OpenVINO (the README's plain install): ONNX Runtime's recipes only
    "auto, onnxruntime": ["--backend", "onnxruntime"],
}


def cpu_info() -> dict[str, Any]:
    import onnxruntime
    import torch

    from vdsr.cpu import cpu_features, cpu_name

    features = cpu_features()
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "features": features.names(),
            "class": features.feature_class, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    try:
        import openvino

        info["openvino"] = openvino.__version__
    except ImportError:
        info["openvino"] = None
    return info


def matmul_peaks() -> dict[str, float]:
    """GFLOP/s (GOP/s for int8) of a large matmul on this CPU, median of 5."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    def timed(fn: Any) -> float:
        fn()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    out: dict[str, float] = {}
    n = 4096
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
        out[f"{name}_matmul_gflops"] = 2 * n**3 / timed(lambda a=a, b=b: a @ b) / 1e9
    m = 2048
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "mm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, m]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [m, m])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [m, m])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"a": np.random.randint(0, 255, (m, m), dtype=np.uint8),
             "b": np.random.randint(-127, 127, (m, m), dtype=np.int8)}
    out["int8_matmul_gops"] = 2 * m**3 / timed(lambda: session.run(None, feeds)) / 1e9
    del onnx
    return out


def make_workloads(tmp: Path, quick: bool) -> dict[str, tuple[list[Path], list[np.ndarray], tuple[int, int]]]:
    from skimage import data

    from vdsr.resize import imresize, modcrop

    loads: dict[str, tuple[list[Path], list[np.ndarray], tuple[int, int]]] = {}
    (tmp / "set5").mkdir()
    files, hrs = [], []
    pixels = 0
    for src in sorted(SET5.glob("*.png")):
        hr = modcrop(np.asarray(Image.open(src).convert("RGB")), 2)
        lr = np.clip(np.round(imresize(hr.astype(np.float64), 0.5)), 0, 255).astype(np.uint8)
        files.append(tmp / "set5" / src.name)
        Image.fromarray(lr).save(files[-1])
        hrs.append(hr)
        pixels += 4 * lr.shape[0] * lr.shape[1]
    loads["set5"] = (files, hrs, (pixels, 1))
    if quick:
        return loads
    for name, size in (("1024", (1024, 1024)), ("12mp", (4000, 3000))):
        (tmp / name).mkdir()
        photo = Image.fromarray(data.astronaut()).resize(size, Image.Resampling.LANCZOS)
        path = tmp / name / f"astronaut_{size[0]}x{size[1]}.png"
        photo.save(path)
        loads[name] = ([path], [], (4 * size[0] * size[1], 1))
    return loads


def y_psnr(a: np.ndarray, b: np.ndarray, shave: int = 2) -> float:
    from vdsr.color import rgb2y
    from vdsr.quality.metrics import psnr

    return psnr(rgb2y(a / 255.0) * 255, rgb2y(b / 255.0) * 255, border=shave)


def _run(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    # Each run in its own measuring process, so that its ru_maxrss is the command's own.
    probe = subprocess.run(
        [sys.executable, "-c", "import json,sys,resource,subprocess,time;"
         "t=time.perf_counter();p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
         "s=time.perf_counter()-t;"
         "print(json.dumps({'s':s,'rc':p.returncode,'out':p.stdout[-400:],'err':p.stderr[-600:],"
         "'rss':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))", *cmd],
        capture_output=True, text=True, check=True, env=env)
    result: dict[str, Any] = json.loads(probe.stdout)
    return result


def command(method: str, files: list[Path], out: Path, weights: Path | None) -> list[str]:
    if method == "baseline":
        cmd = [sys.executable, str(ROOT / "benchmarks" / "baseline_upscale.py"), str(out), *map(str, files)]
        return cmd + (["--weights", str(weights)] if weights else [])
    target = out if len(files) > 1 else out / f"{files[0].stem}_x2.png"
    return [sys.executable, "-m", "vdsr", "upscale", *map(str, files), "-s", "2", "-o", str(target),
            "--overwrite", *ROWS[method], *(["--weights", str(weights)] if weights else [])]


def measure_row(method: str, files: list[Path], out: Path, runs: int, weights: Path | None,
                env: dict[str, str]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    times, peaks, said = [], [], ""
    for _ in range(runs):
        r = _run(command(method, files, out, weights), env)
        if r["rc"] != 0:
            raise RuntimeError(f"{method}: {r['err']}")
        times.append(r["s"])
        peaks.append(r["rss"])
        said = r["out"].strip().splitlines()[-1] if r["out"].strip() else ""
    return {"seconds": statistics.median(times), "times": times, "peak_rss_mb": max(peaks), "said": said}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one run each, Set5 only")
    parser.add_argument("--weights", nargs="+", default=["shipped", "official"])
    parser.add_argument("--methods", nargs="+", default=["baseline", *ROWS])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results_cli.json")
    parser.add_argument("--workloads", nargs="+", default=["set5", "1024", "12mp"],
                        help="which workloads to time (default: all)")
    a = parser.parse_args()
    results: dict[str, Any] = {"machine": cpu_info(), "command": " ".join(["python", *sys.argv]),
                               "peaks": matmul_peaks(), "memory_bound": "450 MB + 3 B per output pixel",
                               "default_tile": DEFAULT_TILE,
                               "rows": {}}
    print(json.dumps(results["peaks"]), flush=True)
    with tempfile.TemporaryDirectory(prefix="vdsr-bench-") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "VDSR_CACHE_DIR": str(tmp / "cache")}
        loads = make_workloads(tmp, a.quick)
        for wname in a.weights:
            weights = None
            if wname == "official":
                from vdsr.weights.importers import convert

                weights = tmp / "official.safetensors"
                convert(OFFICIAL_MAT, weights)
            # First run on a fresh cache: the recipe check (and int8 calibration) included.
            (tmp / "first" / wname).mkdir(parents=True)
            first = _run(command("default", loads["set5"][0][:1], tmp / "first" / wname, weights), env)
            if first["rc"] != 0:
                raise RuntimeError(f"first run: {first['err']}")
            results["rows"][f"{wname}/first_run"] = {"seconds": first["s"], "said": first["out"].strip()}
            for method in a.methods:  # build every cached graph and verdict once, untimed
                if method != "baseline":
                    measure_row(method, loads["set5"][0][:1], tmp / "warm" / wname / method, 1, weights, env)
            for workload, (files, hrs, (out_pixels, _)) in loads.items():
                if workload not in a.workloads:
                    continue  # set5 is still made: the first and the warming runs use it
                runs = 1 if a.quick or workload == "12mp" else a.runs
                base_psnr = None
                for method in a.methods:
                    if workload == "12mp" and method not in ("default", "fp32"):
                        continue  # time and memory of the default (and exact) path only
                    out = tmp / "out" / wname / workload / method
                    row = measure_row(method, files, out, runs, weights, env)
                    row["effective_gflops"] = FLOP_PER_PIXEL * out_pixels / row["seconds"] / 1e9
                    row["memory_bound_mb"] = MEMORY_BOUND_MB + 3 * out_pixels / 2**20
                    if hrs:
                        outs = [np.asarray(Image.open(out / f"{f.stem}_x2.png").convert("RGB")) for f in files]
                        row["y_psnr"] = float(np.mean([y_psnr(h.astype(np.float64), o.astype(np.float64))
                                                       for h, o in zip(hrs, outs, strict=True)]))
                        base_psnr = row["y_psnr"] if method == "baseline" else base_psnr
                        if base_psnr is not None:
                            row["db_vs_baseline"] = row["y_psnr"] - base_psnr
                    key = f"{wname}/{workload}/{method}"
                    results["rows"][key] = row
                    base = results["rows"].get(f"{wname}/{workload}/baseline")
                    if base and method != "baseline":
                        row["x_baseline"] = base["seconds"] / row["seconds"]
                    print(f"{key:<28} {row['seconds']:7.2f} s  RSS {row['peak_rss_mb']:6.0f} MB "
                          f"(bound {row['memory_bound_mb']:.0f})"
                          + (f"  x{row['x_baseline']:.2f}" if "x_baseline" in row else "")
                          + (f"  Y-PSNR {row['y_psnr']:.3f}" if "y_psnr" in row else "")
                          + f"  {row['said']}", flush=True)
                    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")  # after every row


if __name__ == "__main__":
    main()
