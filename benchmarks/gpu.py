"""GPU benchmark steps (issue 16), each one process, each adding its results to one JSON file.

    bash benchmarks/gpu.sh                      # all steps, each under its own timeout (gpu.sh)
    python benchmarks/gpu.py STEP --json FILE [--smoke] [--device cuda] [--data DIR] [--official FILE]

Every number is written into ``FILE`` (atomically) as soon as it is measured, under
``steps[STEP]``, so a step cut short by its timeout keeps what it measured. Steps:

* ``info``: the card's name, memory and driver; torch, CUDA, cuDNN versions.
* ``infer``: a batch of 8 512² Y images through the package's torch backend
  (:class:`vdsr.backends.pytorch.TorchBackend`, ``channels_last``, ``inference_mode``) in fp32 (the
  baseline: eager, TF32 off), tf32, fp16 and bf16; MP/s of network pixels.
* ``infer_compile``: the same in fp16 through the ``compile`` backend (``torch.compile``,
  dynamic shapes, max-autotune without CUDA graphs, as ``vdsr upscale --backend compile`` runs
  it), and a static-shape compile with CUDA graphs (``mode="max-autotune"``) of the same fp16
  forward, with their compile seconds and max |difference| to eager fp16.
* ``e2e``: one 1024² RGB photo, x2, through ``vdsr.api.upscale_pixels(Upscaler(...))`` in
  fp16 (whole image, host copies and colour conversion included), eager and compiled.
* ``accuracy``: Set5 Y-PSNR (rgb8 protocol, whole images) in fp32, tf32, fp16, bf16 for the shipped
  weights and, when ``--official`` names an existing file, the official ones (skipped otherwise).
* ``accuracy_compile``: the same for the shipped weights through the fp16 ``compile`` backend.
* ``train``: ``vdsr train``'s step (``Trainer.train_step``, its precision's ``auto`` = bf16, the
  loss read back once per timed run as ``fit`` does at a log step) at batch 64/128/256, and the
  eager fp32 baseline loop (pytorch-vdsr style, ``loss.item()`` every step) at batch 64.
* ``train_compile``: the same step with ``TrainConfig(compile=True)`` (CUDA graphs) at 64, 256, 128.

``--smoke`` runs every step on tiny sizes with one repeat, so the script is known to run (on a CPU).
The JSON's ``gpu_report.py`` turns it into BENCHMARKS.md's tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import median_time  # noqa: E402

from vdsr.io.fileio import atomic_path  # noqa: E402

STEPS = ("info", "infer", "infer_compile", "e2e", "accuracy", "accuracy_compile", "train", "train_compile")


class Sizes:
    """What each step measures: the issue's sizes, or tiny ones for ``--smoke``."""

    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.batch, self.side = (2, 48) if smoke else (8, 512)  # inference batch of side² Y images
        self.photo = 24 if smoke else 1024  # e2e RGB photo side, upscaled x2
        self.repeats = 1 if smoke else 10
        self.train_batches = (4, 8) if smoke else (64, 128, 256)
        self.train_compile_batches = (4,) if smoke else (64, 256, 128)
        self.train_steps = 2 if smoke else 20  # optimiser steps per timed run
        self.train_repeats = 1 if smoke else 5


class Record:
    """``steps[step][key] = value`` in the JSON file, written atomically after every value."""

    def __init__(self, path: Path, step: str) -> None:
        self.path, self.step = path, step

    def load(self) -> dict[str, Any]:
        if self.path.exists():
            doc: dict[str, Any] = json.loads(self.path.read_text())
            return doc
        return {"steps": {}}

    def __call__(self, key: str, value: Any) -> None:
        doc = self.load()
        doc.setdefault("steps", {}).setdefault(self.step, {})[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"[{self.step}] {key}: {json.dumps(value)}", flush=True)


def sync(dev: torch.device) -> Callable[[], None] | None:
    return (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None


def timed(fn: Callable[[], object], dev: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` after one untimed warm-up run, synchronised around each run."""
    return median_time(fn, repeats, sync=sync(dev))[0]


def precisions(dev: torch.device) -> list[str]:
    return ["fp32", "tf32", "fp16", "bf16"] if dev.type == "cuda" else ["fp32", "fp16", "bf16"]


# -- steps ---------------------------------------------------------------------------------------
def step_info(rec: Record, dev: torch.device, args: argparse.Namespace, sz: Sizes) -> None:
    rec("torch", torch.__version__)
    rec("cuda", torch.version.cuda)
    rec("cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    rec("device", str(dev))
    if dev.type != "cuda":
        rec("card", "cpu")
        rec("threads", torch.get_num_threads())
        return
    props = torch.cuda.get_device_properties(dev)
    rec("card", torch.cuda.get_device_name(dev))
    rec("memory_mib", props.total_memory // 2**20)
    rec("capability", f"{props.major}.{props.minor}")
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        rec("nvidia_smi", smi.stdout.strip())
    except (OSError, subprocess.SubprocessError) as exc:
        rec("nvidia_smi", f"unavailable: {exc}")


def _batch(dev: torch.device, sz: Sizes) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(sz.batch, 1, sz.side, sz.side, generator=gen).to(dev)


def step_infer(rec: Record, dev: torch.device, args: argparse.Namespace, sz: Sizes) -> None:
    from vdsr.backends.pytorch import TorchBackend
    from vdsr.weights import load_model

    model, _ = load_model()
    model.eval()
    x = _batch(dev, sz)
    mp = x.numel() / 1e6
    rec("batch", [sz.batch, 1, sz.side, sz.side])
    # The baseline: eager fp32 as pytorch-vdsr runs it (NCHW, cuDNN heuristics, no autotuning),
    # with TF32 off so that it is fp32.
    base = model.to(dev)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, allow_tf32=False), torch.no_grad():
        seconds = timed(lambda: base(x), dev, sz.repeats)
    rec("baseline_fp32_nchw_mp_per_s", mp / seconds)
    for p in precisions(dev):
        backend = TorchBackend(model, dev, p)
        seconds = timed(lambda b=backend: b(x), dev, sz.repeats)
        rec(f"{p}_mp_per_s", mp / seconds)


def step_infer_compile(rec: Record, dev: torch.device, args: argparse.Namespace, sz: Sizes) -> None:
    from vdsr.backends.pytorch import TorchBackend
    from vdsr.weights import load_model

    model, _ = load_model()
    model.eval()
    x = _batch(dev, sz)
    mp = x.numel() / 1e6
    eager = TorchBackend(model, dev, "fp16")(x)
    compiled = TorchBackend(model, dev, "fp16", compile=True)
    t = time.perf_counter()
    first = compiled(x)
    rec("compile_fp16_compile_s", time.perf_counter() - t)
    rec("compile_fp16_max_abs_diff_vs_eager_fp16", float((first - eager).abs().max()))
    rec("compile_fp16_mp_per_s", mp / timed(lambda: compiled(x), dev, sz.repeats))

    # Static shapes + CUDA graphs: the road past launch overhead for a fixed batch.
    low = TorchBackend(model, dev, "fp16")
    assert low._low is not None
    body = low._low

    def forward(inp: torch.Tensor) -> torch.Tensor:
        return inp + body.predict_residual(inp.half()).float()

    mode = "max-autotune" if dev.type == "cuda" else None
    static = torch.compile(forward, dynamic=False, mode=mode)
    xc = x.contiguous(memory_format=torch.channels_last)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return static(xc).clone()

    t = time.perf_counter()
    first = run()
    rec("static_cudagraphs_fp16_compile_s", time.perf_counter() - t)
    rec("static_cudagraphs_fp16_max_abs_diff_vs_eager_fp16", float((first - eager).abs().max()))
    rec("static_cudagraphs_fp16_mp_per_s", mp / timed(run, dev, sz.repeats))


def step_e2e(rec: Record, dev: torch.device, args: argparse.Namespace, sz: Sizes) -> None:
    from vdsr.api import upscale_pixels
    from vdsr.engine import Upscaler
    from vdsr.weights import load_model

    model, _ = load_model()
    model.eval()
    photo = np.random.default_rng(0).random((sz.photo, sz.photo, 3))
    out_mp = (2 * sz.photo) ** 2 / 1e6
    rec("photo", {"side": sz.photo, "scale": 2, "output_mp": out_mp})
    for backend in ("torch", "compile"):
        up = Upscaler(model, device=dev, backend=backend, precision="fp16", tile=None)
        t = time.perf_counter()
        upscale_pixels(up, photo, 2, dtype=np.uint8)
        rec(f"{backend}_fp16_first_call_s", time.perf_counter() - t)
        seconds = timed(lambda u=up: upscale_pixels(u, photo, 2, dtype=np.uint8), dev,
                        max(1, sz.repeats // 2))
        rec(f"{backend}_fp16_seconds", seconds)
        rec(f"{backend}_fp16_output_mp_per_s", out_mp / seconds)


def _accuracy(rec: Record, dev: torch.device, args: argparse.Namespace, sz: Sizes,
              backend: str, precs: list[str], official: bool) -> None:
    from vdsr.engine import Upscaler
    from vdsr.evaluate import evaluate_folder
    from vdsr.weights import load_model

    data = Path(args.data)
    if not data.is_dir():
        rec("skipped", f"no data folder {data}")
        return
    if sz.smoke:  # two 40² crops: CPU fp16 convolutions are ~40x slower than fp32
        data = _crops(data, Path(args.tmp) / "vdsr-smoke-crops", 40)
    weights: list[tuple[str, str | None]] = [("shipped", None)]
    if official:
        if args.official and Path(args.official).exists():
            weights.append(("official", args.official))
        else:
            rec("official_skipped", f"no file {args.official!r} (pass --official FILE.safetensors)")
    scales = [2] if sz.smoke else [2, 3, 4]
    for name, file in weights:
        model, _ = load_model(file)
        model.eval()
        for p in precs:
            up = Upscaler(model, device=dev, backend=backend, precision=p, tile=None)
            t = time.perf_counter()
            results = evaluate_folder(up, data, scales, with_ssim=False)
            rec(f"{name}_{backend}_{p}", {"psnr": {f"x{r.scale}": r.psnr for r in results},
                                          "images": results[0].images,
                                          "seconds": time.perf_counter() - t})


def _crops(folder: Path, out: Path, side: int) -> Path:
    """The top-left ``side``² of the first two images of ``folder``, as PNGs in ``out``."""
    from vdsr.io.encode import save_image
    from vdsr.io.images import list_images, load_image

    out.mkdir(parents=True, exist_ok=True)
    for f in list_images(folder)[:2]:
        save_image(out / f"{f.stem}.png", load_image(f).raw[:side, :side])
    return out


def step_accuracy(rec: Record, dev: torch.device, args: argparse.Namespace, sz: Sizes) -> None:
    rec("data", str(args.data))
    _accuracy(rec, dev, args, sz, "torch", precisions(dev), official=True)


def step_accuracy_compile(rec: Record, dev: torch.device, args: argparse.Namespace, sz: Sizes) -> None:
    _accuracy(rec, dev, args, sz, "compile", ["fp16"], official=False)


def _trainer(dev: torch.device, batch: int, compile: bool, tmp: Path) -> Any:
    """A ``Trainer`` of the default model on synthetic degraded images (no files needed)."""
    from vdsr.train import TrainConfig, Trainer, configure_process
    from vdsr.train.data import DegradedImage, PatchSampler

    rng = np.random.default_rng(0)
    images = [DegradedImage(rng.random((1, 256, 256), dtype=np.float32),
                            rng.random((1, 256, 256), dtype=np.float32), 2) for _ in range(8)]
    config = TrainConfig(run_dir=str(tmp / f"run_{batch}_{int(compile)}"), val_dir=None,
                         batch_size=batch, device=str(dev), compile=compile, steps=10**6)
    configure_process(config)  # as `vdsr train` does: TF32 off for bf16, cuDNN autotuning on
    return Trainer(config, sampler=PatchSampler(images, 41, seed=0))


def _train_rate(rec: Record, dev: torch.device, sz: Sizes, batch: int, compile: bool, tmp: Path) -> None:
    trainer = _trainer(dev, batch, compile, tmp)
    tag = "compile" if compile else "eager"
    rec(f"{tag}_b{batch}_precision", trainer.precision)

    def steps() -> None:
        pending = []
        for _ in range(sz.train_steps):
            x, y = trainer.next_batch()
            pending.append(trainer.train_step(x, y))
            trainer.scheduler.step()
        trainer._read_losses(pending)  # the loss check of a log step: one read, raises if non-finite

    t = time.perf_counter()
    steps()  # warm-up: cuDNN autotuning; with compile, compiling and recording the graphs
    rec(f"{tag}_b{batch}_warmup_s", time.perf_counter() - t)
    seconds = median_time(steps, sz.train_repeats, warmup=lambda: None, sync=sync(dev))[0]
    rec(f"{tag}_b{batch}_patches_per_s", batch * sz.train_steps / seconds)
    rec(f"{tag}_b{batch}_ms_per_step", 1e3 * seconds / sz.train_steps)


def step_train(rec: Record, dev: torch.device, args: argparse.Namespace, sz: Sizes) -> None:
    from vdsr.nn.model import VDSR

    b0 = sz.train_batches[0]
    torch.manual_seed(0)
    plain = VDSR().to(dev)
    opt = torch.optim.Adam(plain.parameters(), 1e-4)
    xb, yb = torch.rand(b0, 1, 41, 41, device=dev), torch.rand(b0, 1, 41, 41, device=dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.allow_tf32 = False  # the baseline is fp32

    def plain_steps() -> None:
        for _ in range(sz.train_steps):
            loss = torch.nn.functional.mse_loss(plain(xb), yb)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_value_(plain.parameters(), 0.1)
            opt.step()
            float(loss)  # the usual per-step loss.item()

    seconds = timed(plain_steps, dev, sz.train_repeats)
    rec(f"baseline_fp32_b{b0}_patches_per_s", b0 * sz.train_steps / seconds)
    for batch in sz.train_batches:
        _train_rate(rec, dev, sz, batch, False, Path(args.tmp))


def step_train_compile(rec: Record, dev: torch.device, args: argparse.Namespace, sz: Sizes) -> None:
    for batch in sz.train_compile_batches:
        _train_rate(rec, dev, sz, batch, True, Path(args.tmp))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=(*STEPS, "mark"))
    ap.add_argument("--json", type=Path, required=True, help="results file (created or added to)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "Set5"),
                    help="Set5 folder for the accuracy steps (skipped if absent)")
    ap.add_argument("--official", help="official weights as .safetensors (vdsr convert); skipped if absent")
    ap.add_argument("--tmp", default=os.environ.get("TMPDIR", "/tmp"), help="scratch folder for run folders")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--rc", type=int, help="mark: the step's exit status")
    ap.add_argument("--seconds", type=float, help="mark: the step's wall seconds")
    ap.add_argument("--name", help="mark: which step")
    args = ap.parse_args()
    if args.step == "mark":  # gpu.sh records how each step ended, timeouts included
        rec = Record(args.json, "_status")
        rec(args.name, {"rc": args.rc, "seconds": args.seconds,
                        "timed_out": args.rc in (124, 137)})
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --device cpu --smoke to try the script on a CPU)")
    rec = Record(args.json, args.step)
    rec("smoke", args.smoke)
    globals()[f"step_{args.step}"](rec, dev, args, Sizes(args.smoke))


if __name__ == "__main__":
    main()
