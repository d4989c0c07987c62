"""Benchmarks: inference and training speed against a pytorch-vdsr-style baseline, in one run.

    python benchmarks/run.py [--quick] [--out BENCHMARKS.json]

Each case runs in its own subprocess so its peak RSS is its own. Reported: median wall time,
megapixels/s, effective GFLOP/s (the model's direct-convolution FLOPs / time), that as a fraction
of this machine's fp32 matmul peak (a 4096^2 matmul measured in the same run), and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np
import torch
from timing import median_time

METHODS = ("baseline", "ours:torch", "ours:onnxruntime", "ours:int8")
SET5_SIZES = [(512, 512), (288, 288), (256, 256), (280, 280), (228, 344)]  # HR sizes = x2 outputs


def _model() -> Any:
    from vdsr.weights import load_model

    model, _ = load_model()
    return model


def case_matmul(repeats: int) -> dict[str, Any]:
    a, b = torch.rand(4096, 4096), torch.rand(4096, 4096)
    med, _ = median_time(lambda: a @ b, repeats)
    return {"seconds": med, "gflops": 2 * 4096**3 / med / 1e9}


def _images(workload: str) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    if workload == "set5":
        return [rng.random((1, h // 2, w // 2)).astype(np.float32) for h, w in SET5_SIZES]
    return [rng.random((1, 1024, 1024)).astype(np.float32)]


def case_inference(method: str, workload: str, repeats: int) -> dict[str, Any]:
    """Network + bicubic on Y: (a) baseline eager NCHW whole image; (b) our `upscale` path."""
    from vdsr.api import bicubic_upscale, run_network
    from vdsr.nn.model import flops_per_pixel

    model = _model()
    lrs = [im[0] for im in _images(workload)]
    pixels = sum(4 * lr.size for lr in lrs)

    def baseline() -> None:
        with torch.no_grad():  # pytorch-vdsr: whole image, fp32, NCHW, eager
            for lr in lrs:
                x = torch.from_numpy(bicubic_upscale(lr, 2).astype(np.float32))[None, None]
                model(x)

    def ours() -> None:
        for lr in lrs:
            run_network(model, bicubic_upscale(lr, 2)[None], backend=method.split(":")[1], tile=512)

    small = np.random.default_rng(1).random((1, 64, 64)).astype(np.float32)

    def warmup() -> None:  # on a small input, so the big case is not run an extra time
        # (for int8 this also calibrates once, or reads the calibrated model from the cache)
        if method == "baseline":
            with torch.no_grad():
                model(torch.from_numpy(small)[None])
        else:
            run_network(model, small, backend=method.split(":")[1], tile=512)

    med, times = median_time(baseline if method == "baseline" else ours, repeats, warmup)
    gflop = flops_per_pixel(model) * pixels / 1e9
    return {"seconds": med, "times": times, "megapixels_per_s": pixels / med / 1e6,
            "gflops": gflop / med, "output_megapixels": pixels / 1e6}


def case_equal(workload: str) -> dict[str, Any]:
    """Max abs difference between our path and the eager whole-image reference (float, 0-1)."""
    from vdsr.api import run_network

    model = _model()
    diffs = []
    for im in _images(workload)[:2]:
        ref = run_network(model, im, tile=None, backend="torch")
        diffs.append(float(np.abs(run_network(model, im, tile=512) - ref).max()))
    return {"max_abs_diff": max(diffs)}


def case_int8_psnr() -> dict[str, Any]:
    """Set5 Y-PSNR of the int8 backend against fp32 ONNX Runtime, default weights, x2/x3/x4."""
    from pathlib import Path

    from vdsr.evaluate import evaluate_folder

    folder = Path("../shared/datasets/Set5")
    if not folder.is_dir():
        return {"skipped": f"{folder} not found"}
    model = _model()
    fp32 = evaluate_folder(model, folder, [2, 3, 4], with_ssim=False, backend="onnxruntime")
    int8 = evaluate_folder(model, folder, [2, 3, 4], with_ssim=False, backend="int8")
    return {f"x{a.scale}": {"fp32": a.psnr, "int8": b.psnr, "delta": b.psnr - a.psnr}
            for a, b in zip(fp32, int8, strict=True)}


def case_train(method: str, repeats: int, batch: int = 64) -> dict[str, Any]:
    from vdsr.nn.model import VDSR, VDSRConfig
    from vdsr.train import TrainConfig, Trainer, configure_process

    x = torch.rand(batch, 1, 41, 41)
    y = torch.rand(batch, 1, 41, 41)
    if method == "baseline":  # pytorch-vdsr's loop: SGD, norm clipping, NCHW, eager
        model = VDSR(VDSRConfig(bias=False))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        crit = torch.nn.MSELoss(reduction="sum")

        def step() -> None:
            loss = crit(model(x), y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.4)
            opt.step()
    else:
        config = TrainConfig(run_dir=tempfile.mkdtemp(), val_dir=None, batch_size=batch)
        configure_process(config)
        trainer = Trainer(config, sampler=object())  # batches come from x, y

        def step() -> None:
            trainer.train_step(x, y)
    med, times = median_time(step, repeats)
    return {"seconds_per_step": med, "patches_per_s": batch / med, "times": times}


def run_case(name: str, args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--case", name, *args],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no 1024^2 case")
    parser.add_argument("--int8-only", action="store_true",
                        help="only the Set5 workload: baseline, onnxruntime, int8, and int8 PSNR")
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("rest", nargs="*")
    a = parser.parse_args()
    if a.case:
        kind, *params = a.case.split("/")
        reps = int(a.rest[0]) if a.rest else 3
        if kind == "matmul":
            result = case_matmul(reps)
        elif kind == "inference":
            result = case_inference(params[0], params[1], reps)
        elif kind == "equal":
            result = case_equal(params[0])
        elif kind == "int8_psnr":
            result = case_int8_psnr()
        else:
            result = case_train(params[0], reps)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    nrep = "2" if a.quick else "3"
    results: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv)}
    results["matmul"] = run_case("matmul", [nrep])
    peak = results["matmul"]["gflops"]
    workloads = ["set5"] if a.quick or a.int8_only else ["set5", "1024"]
    methods = ("baseline", "ours:onnxruntime", "ours:int8") if a.int8_only else METHODS
    for wl in workloads:
        r = "1" if wl == "1024" else nrep  # one run of each: ~1-2 min apiece on 2 cores
        for method in methods:
            res = run_case(f"inference/{method}/{wl}", [r])
            res["fraction_of_matmul_peak"] = res["gflops"] / peak
            results[f"inference/{method}/{wl}"] = res
            print(f"{wl:>5} {method:<18} {res['seconds']:7.2f} s  {res['megapixels_per_s']:.3f} MP/s  "
                  f"{res['gflops']:6.1f} GFLOP/s ({res['fraction_of_matmul_peak']:.2f} of matmul peak)  "
                  f"RSS {res['peak_rss_mb']:.0f} MB", flush=True)
        if not a.int8_only:
            results[f"equal/{wl}"] = run_case(f"equal/{wl}", [])
    results["int8_psnr"] = run_case("int8_psnr", [])
    for method in () if a.int8_only else ("baseline", "ours"):
        res = run_case(f"train/{method}", [nrep])
        results[f"train/{method}"] = res
        print(f"train {method:<8} {res['patches_per_s']:.1f} patches/s", flush=True)
    print(f"matmul peak {peak:.1f} GFLOP/s")
    with open(a.out, "w") as fh:
        json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
