"""GPU benchmark: inference MP/s, training patches/s and bf16 accuracy, against eager fp32.

    bash benchmarks/gpu.sh [--out FILE]     # one command, about a minute on an H100-class card

Measured in one run, on the same weights (the shipped model) and inputs:

* inference, a batch of 8 512x512 Y images: the baseline (eager fp32 NCHW, cuDNN heuristics, as
  pytorch-vdsr runs it) vs the package's GPU path (bf16 autocast, channels_last, cuDNN
  autotuning, ``inference_mode``); and ``run_network`` on one 1024x1024 image, host copies included;
* training: a plain eager fp32 loop (pytorch-vdsr style, batch already on the GPU) vs
  ``vdsr train``'s own loop (patches cut on the GPU by ``PatchSampler.batch_tensors``, bf16
  autocast, channels_last, Adam, clipping, loss read back only at log steps) at batch 64/128/256;
* Set5 Y-PSNR of the bf16 path vs fp32 at x2/x3/x4 (goal: within 0.05 dB).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timing import median_time

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (64, 128, 256)  # training batch sizes of `vdsr train`'s loop; the baseline uses the first
STEPS = 20  # optimiser steps per timed run


def timed(fn: Any, repeats: int = 10) -> float:
    """Median seconds of ``fn()``, synchronised with the GPU around each run."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else None
    return median_time(fn, repeats, sync=sync)[0]


def inference(model: torch.nn.Module, dev: torch.device) -> dict[str, float]:
    from vdsr.inference import run_network

    x = torch.rand(8, 1, 512, 512, device=dev)
    mp = x.numel() / 1e6
    torch.backends.cudnn.benchmark = False
    with torch.no_grad():
        base = timed(lambda: model(x))
    torch.backends.cudnn.benchmark = True
    fast_model = model.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)

    def fast() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
            return fast_model(xc)

    tuned = timed(fast)
    image = np.random.default_rng(0).random((1, 1024, 1024), dtype=np.float32)
    whole = timed(lambda: run_network(fast_model, image, tile=None, device=dev, backend="torch"), 5)
    return {"eager_fp32": mp / base, "bf16_channels_last": mp / tuned,
            "run_network_1024": 1024 * 1024 / 1e6 / whole}


def training(dev: torch.device, data: Path) -> dict[str, float]:
    from vdsr.data import PatchSampler, collect_files, degraded_images
    from vdsr.model import VDSR
    from vdsr.train import TrainConfig, Trainer

    out: dict[str, float] = {}
    plain = VDSR().to(dev)
    opt = torch.optim.Adam(plain.parameters(), 1e-4)
    b0 = BATCHES[0]
    xb, yb = torch.rand(b0, 1, 41, 41, device=dev), torch.rand(b0, 1, 41, 41, device=dev)
    torch.backends.cudnn.benchmark = False

    def plain_steps() -> None:
        for _ in range(STEPS):
            loss = torch.nn.functional.mse_loss(plain(xb), yb)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_value_(plain.parameters(), 0.1)
            opt.step()
            float(loss)  # the usual per-step loss.item()

    out[f"eager_fp32_b{b0}"] = b0 * STEPS / timed(plain_steps, 5)
    images = list(degraded_images(collect_files([data]), [2, 3, 4], 1, [1.0, 0.7, 0.5], 41))
    for batch in BATCHES:
        sampler = PatchSampler(images, 41, seed=0)
        trainer = Trainer(TrainConfig(val_dir=None, batch_size=batch, device=str(dev)), sampler=sampler)

        def steps(t: Trainer = trainer) -> None:
            for _ in range(STEPS):
                x, y = t.next_batch()
                t.train_step(x, y)
                t.scheduler.step()

        out[f"vdsr_train_b{batch}"] = batch * STEPS / timed(steps, 5)
    return out


def accuracy(model: torch.nn.Module, dev: torch.device, folder: Path) -> dict[str, Any]:
    """Set5 Y-PSNR (rgb8 protocol, whole images) of fp32 and bf16 autocast outputs."""
    from vdsr.evaluate import make_pair
    from vdsr.images import list_images, load_image
    from vdsr.metrics import psnr

    model = model.to(memory_format=torch.contiguous_format).float()
    images = [load_image(f).pixels for f in list_images(folder)]
    result: dict[str, Any] = {}
    for scale in (2, 3, 4):
        scores: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for pixels in images:
            gt, bic = make_pair(pixels, scale)
            x = torch.from_numpy(bic / 255.0).float()[None, None].to(dev)
            for name, amp in (("fp32", False), ("bf16", True)):
                with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    y = model(x).float()[0, 0].cpu().numpy().astype(np.float64)
                scores[name].append(psnr(gt, np.clip(y * 255.0, 0, 255), border=scale))
        fp32, bf16 = float(np.mean(scores["fp32"])), float(np.mean(scores["bf16"]))
        result[f"x{scale}"] = {"fp32": fp32, "bf16": bf16, "diff_db": bf16 - fp32}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the results to this JSON file")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "Set5"),
                        help="HR images for the training feed and the accuracy check (default Set5)")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    args = parser.parse_args()

    from vdsr.weights import load_model

    dev = torch.device(args.device)
    assert dev.type == "cpu" or torch.cuda.is_available(), "no CUDA device"
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    results: dict[str, Any] = {"device": name, "torch": torch.__version__,
                               "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    model, _ = load_model(device=dev)
    model.eval()
    results["inference_mp_per_s"] = inference(model, dev)
    print(json.dumps(results, indent=2), flush=True)
    results["train_patches_per_s"] = training(dev, Path(args.data))
    print(json.dumps(results["train_patches_per_s"], indent=2), flush=True)
    results["set5_psnr"] = accuracy(model, dev, Path(args.data))
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
