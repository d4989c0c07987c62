"""CPU inference paths side by side (issue 17): speed ratios in one process, accuracy on Set5/Set14.

    python benchmarks/cpu_backends.py --speed                 # ratios vs eager fp32, ~2 min
    python benchmarks/cpu_backends.py --accuracy              # Y-PSNR vs fp32, ~30 min on 2 cores
    python benchmarks/cpu_backends.py --speed --compile       # also torch.compile (minutes to build)

Writes (merging into) ``benchmarks/results_cpu_backends.json`` with the CPU's name and features.

Speed: one ``size``² Y image, every candidate built first, then ``rounds`` rounds in which each
candidate runs once in turn (so load from other processes hits all of them alike); the median per
candidate, and its ratio to the baseline, eager PyTorch fp32 on the whole NCHW image. All paths use
``--threads`` threads. Build time (graph export, calibration, compilation, with the on-disk cache
warm) is reported apart: it is paid once per process.

Accuracy: :func:`vdsr.evaluate.evaluate_folder` (rgb8 protocol, Y-PSNR, whole images) for the
shipped and the official weights on Set5 and Set14 at x2/x3/x4; the difference to the fp32
reference (ONNX Runtime fp32, equal to eager PyTorch up to 1e-6) per dataset and scale.

Candidates: eager torch fp32 NCHW (baseline), torch fp32 channels_last (the ``torch`` backend),
ONNX Runtime fp32, OpenVINO fp32 and bf16 (bf16 only measured for speed where the CPU has it; its
accuracy is measured anywhere, OpenVINO emulates it), ONNX Runtime int8 keeping the first ``a``
and the last ``b`` convolutions fp32 (``int8 a+b``; the package's recipe is 3+1), OpenVINO running
the same int8 graph, torch bf16 (the ``torch`` backend's bf16 body).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vdsr.backends import Backend
from vdsr.backends.ort import OrtBackend
from vdsr.backends.pytorch import TorchBackend
from vdsr.cpu import cpu_features, cpu_name
from vdsr.engine import Upscaler
from vdsr.evaluate import evaluate_folder
from vdsr.export import calibration_inputs, onnx_int8_bytes
from vdsr.nn.model import VDSR
from vdsr.weights import load_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OUT = ROOT / "benchmarks" / "results_cpu_backends.json"
DATASETS = ("Set5", "Set14")
SCALES = (2, 3, 4)
INT8_SPLITS = ((3, 1), (5, 1), (10, 1), (3, 3), (3, 9))  # (first, last) convolutions kept fp32


class EagerNCHW:
    """The baseline: ``model(x)`` in fp32, NCHW, whole image, under ``inference_mode``."""

    name, precision, device = "eager", "fp32", torch.device("cpu")

    def __init__(self, model: VDSR) -> None:
        self.model = model.eval()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x.float().contiguous())
        return out


class OrtGraph(OrtBackend):
    """ONNX Runtime on a given graph (an int8 variant)."""

    def __init__(self, graph: bytes, name: str, threads: int) -> None:
        import onnxruntime as ort

        self.name, self.precision = name, "int8"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_mem_pattern = False
        options.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


class Compiled:
    """torch.compile (inductor, C++ on CPU) of the eager fp32 forward, dynamic shapes."""

    name, precision, device = "compile", "fp32", torch.device("cpu")

    def __init__(self, model: VDSR) -> None:
        self.model = model.eval()
        self.fn = torch.compile(self.model, dynamic=True)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fn(x.float().contiguous())
        return out


def candidates(model: VDSR, threads: int, which: set[str] | None, compile_: bool,
               bf16: bool) -> dict[str, Callable[[], Backend]]:
    """Name -> builder. ``which`` limits them (None: all); ``bf16``: include the bf16 paths."""
    from vdsr.backends.openvino import OpenVinoBackend, openvino_available

    int8_graphs: dict[tuple[int, int], bytes] = {}

    def int8_graph(split: tuple[int, int]) -> bytes:
        if split not in int8_graphs:
            int8_graphs[split] = onnx_int8_bytes(model, *split)
        return int8_graphs[split]

    made: dict[str, Callable[[], Backend]] = {
        "eager fp32 (baseline)": lambda: EagerNCHW(model),
        "torch fp32 channels_last": lambda: TorchBackend(model, torch.device("cpu"), "fp32"),
        "onnxruntime fp32": lambda: OrtBackend(model, threads=threads),
    }
    if openvino_available():
        made["openvino fp32"] = lambda: OpenVinoBackend(model, "fp32", threads)
        if bf16:
            made["openvino bf16"] = lambda: OpenVinoBackend(model, "bf16", threads)
    for split in INT8_SPLITS:
        made[f"onnxruntime int8 {split[0]}+{split[1]}"] = (
            lambda s=split: OrtGraph(int8_graph(s), f"int8 {s[0]}+{s[1]}", threads))
    if openvino_available():
        for split in ((3, 1), (3, 3)):
            made[f"openvino int8 {split[0]}+{split[1]}"] = (
                lambda s=split: OpenVinoBackend(model, "int8", threads, graph=int8_graph(s)))
    if bf16:
        made["torch bf16"] = lambda: TorchBackend(model, torch.device("cpu"), "bf16")
    if compile_:
        made["torch.compile fp32"] = lambda: Compiled(model)
    if which is not None:
        made = {k: v for k, v in made.items() if k in which}
    return made


def y_image(size: int) -> torch.Tensor:
    """A natural bicubic-degraded Y image ``(1, 1, size, size)``: calibration photos tiled."""
    crops = [c[0, 0] for c in calibration_inputs(1, 120)]
    side = -(-size // 120)
    grid = np.block([[crops[(r * side + c) % len(crops)] for c in range(side)] for r in range(side)])
    return torch.from_numpy(np.ascontiguousarray(grid[:size, :size], dtype=np.float32))[None, None]


def speed(model: VDSR, size: int, rounds: int, threads: int, which: set[str] | None,
          compile_: bool, bf16: bool) -> dict[str, Any]:
    x = y_image(size)
    built: dict[str, Backend] = {}
    build_s: dict[str, float] = {}
    first_s: dict[str, float] = {}
    for name, make in candidates(model, threads, which, compile_, bf16).items():
        t0 = time.perf_counter()
        built[name] = make()
        build_s[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        built[name](x)  # warm-up (and compilation for torch.compile)
        first_s[name] = time.perf_counter() - t0
        print(f"built {name}: {build_s[name]:.2f} s, first call {first_s[name]:.2f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in built}
    for _ in range(rounds):
        for name, backend in built.items():
            t0 = time.perf_counter()
            backend(x)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["eager fp32 (baseline)"]) if "eager fp32 (baseline)" in times else None
    gflop = 2 * model_macs(model) * size * size / 1e9
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"median_s": med, "times_s": ts, "build_s": build_s[name],
                      "first_call_s": first_s[name], "gflops": gflop / med,
                      "vs_eager": (base / med) if base else None}
        print(f"{name:<28} {med:7.3f} s  {gflop / med:6.1f} GFLOP/s  "
              f"x{(base / med) if base else float('nan'):.2f}", flush=True)
    return {"size": size, "rounds": rounds, "threads": threads, "rows": rows}


def model_macs(model: VDSR) -> int:
    """Multiply-accumulates per output pixel."""
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))


def accuracy(weights: dict[str, Path | None], threads: int, which: set[str] | None,
             datasets: list[str], results: dict[str, Any], save: Callable[[], None]) -> None:
    """Y-PSNR per weights, candidate, dataset and scale, merged into ``results["accuracy"]``;
    (candidate, dataset) pairs already there are kept, so runs can be split and resumed."""
    acc = results.setdefault("accuracy", {})
    for dataset in datasets:
        for label, path in weights.items():
            model, _ = load_model(path)
            per = acc.setdefault(label, {})
            for name, make in candidates(model, threads, which, False, bf16=True).items():
                skip = ("eager fp32 (baseline)", "torch fp32 channels_last", "torch bf16")
                if name in skip and (which is None or name not in which):
                    continue  # fp32 like the reference; torch bf16 emulated is slow (on request)
                scores = per.setdefault(name, {})
                if f"{dataset} x{SCALES[0]}" in scores:
                    continue
                t0 = time.perf_counter()
                up = Upscaler(model, backend_instance=make(), tile=None)
                for r in evaluate_folder(up, SHARED / "datasets" / dataset, SCALES, with_ssim=False):
                    scores[f"{dataset} x{r.scale}"] = r.psnr
                ref = per.get("onnxruntime fp32", {})
                print(f"{label} {dataset} {name}: {time.perf_counter() - t0:.0f} s  " + "  ".join(
                    f"x{s} {scores[f'{dataset} x{s}']:.3f}"
                    + (f" ({scores[f'{dataset} x{s}'] - ref[f'{dataset} x{s}']:+.3f})"
                       if f"{dataset} x{s}" in ref else "") for s in SCALES), flush=True)
                add_deltas(acc)
                save()


def add_deltas(acc: dict[str, Any]) -> None:
    """Per weights: each candidate's worst and per-key difference to ``onnxruntime fp32``."""
    for per in acc.values():
        ref = per.get("onnxruntime fp32")
        if not ref:
            continue
        summary = {}
        for name, scores in per.items():
            if name.startswith("_"):
                continue
            delta = {k: scores[k] - ref[k] for k in scores if k in ref}
            if delta:
                summary[name] = {"delta_db": delta, "worst_db": min(delta.values())}
        per["_vs_fp32"] = summary


def table(results: dict[str, Any]) -> str:
    """The accuracy differences to fp32 as a markdown table: one row per candidate and weights."""
    keys = [f"{d} x{s}" for d in DATASETS for s in SCALES]
    lines = ["| path | weights | " + " | ".join(keys) + " | worst |",
             "|---|---|" + "---|" * (len(keys) + 1)]
    acc = results.get("accuracy", {})
    names = list(dict.fromkeys(n for per in acc.values() for n in per.get("_vs_fp32", {})))
    for name in names:
        for label, per in acc.items():
            row = per.get("_vs_fp32", {}).get(name)
            if row is None or name == "onnxruntime fp32":
                continue
            cells = [f"{row['delta_db'][k]:+.3f}" if k in row["delta_db"] else "" for k in keys]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + f" | {row['worst_db']:+.3f} |")
    ref = {label: per.get("onnxruntime fp32", {}) for label, per in acc.items()}
    for label, scores in ref.items():
        cells = [f"{scores[k]:.3f}" if k in scores else "" for k in keys]
        lines.append(f"| fp32 (reference, dB) | {label} | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--table", action="store_true", help="print the accuracy table (markdown)")
    parser.add_argument("--bf16", action="store_true",
                        help="time bf16 paths even without native bf16 (emulated: shows they lose)")
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), help="for --accuracy")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--official", type=Path, default=Path("/tmp/official.safetensors"),
                        help="the official weights (vdsr convert vdsr_official_matconvnet.mat)")
    parser.add_argument("--note", default="", help="recorded with the results (e.g. 'under load')")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    note = args.note or results.get("machine", {}).get("note", "")
    results["machine"] = {
        "cpu": cpu_name(), "features": cpu_features().to_dict(), "cores_used": args.threads,
        "torch": torch.__version__, "python": platform.python_version(), "note": note,
        **_versions(),
    }

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")

    which = set(args.only) if args.only else None
    if args.speed:  # runs accumulate: under load only ratios within one run compare
        run = speed(load_model()[0], args.size, args.rounds, args.threads, which, args.compile,
                    args.bf16 or cpu_features().bf16)
        results.setdefault("speed_runs", []).append({**run, "note": note})
        save()
    if args.accuracy:
        weights: dict[str, Path | None] = {"shipped": None}
        if args.official.exists():
            weights["official"] = args.official
        else:
            print(f"official weights not found at {args.official}; shipped only", file=sys.stderr)
        accuracy(weights, args.threads, which, args.datasets, results, save)
        save()
    if args.table:
        print(table(results))


def _versions() -> dict[str, str]:
    out = {}
    for module in ("onnxruntime", "openvino"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            out[module] = "not installed"
    return out


if __name__ == "__main__":
    main()
