"""GPU benchmark: inference MP/s and training patches/s, eager fp32 NCHW baseline vs the tuned
path (bf16 autocast, channels_last, cuDNN autotuning, optional torch.compile), same weights.

    bash benchmarks/gpu.sh          # one command, well under 5 minutes on an H100-class card

Also checks that the bf16 output stays within 0.05 dB Y-PSNR of fp32 on Set5 (when ../shared exists).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from timing import median_time


def timed(fn: Any, repeats: int = 10) -> float:
    """Median seconds of ``fn()`` on the GPU, synchronised around each run."""
    return median_time(fn, repeats, sync=torch.cuda.synchronize)[0]


def main() -> None:
    from vdsr.model import VDSR
    from vdsr.weights import load_model

    assert torch.cuda.is_available(), "no CUDA device"
    dev = torch.device("cuda")
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    model, _ = load_model(device=dev)
    x = torch.rand(8, 1, 512, 512, device=dev)
    mp = x.numel() / 1e6

    torch.backends.cudnn.benchmark = False
    with torch.inference_mode():
        base = timed(lambda: model(x))
    torch.backends.cudnn.benchmark = True
    fast_model = model.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)

    def fast() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            return fast_model(xc)

    tuned = timed(fast)
    results["inference_mp_per_s"] = {"eager_fp32": mp / base, "bf16_channels_last": mp / tuned}
    if "--compile" in sys.argv:
        compiled = torch.compile(fast_model, mode="max-autotune")

        def comp() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                return compiled(xc)

        results["inference_mp_per_s"]["bf16_compiled"] = mp / timed(comp)

    # Training: batch 256 of 41x41, Adam, the package's train step vs a plain fp32 loop.
    from vdsr.train import TrainConfig, Trainer

    xb, yb = torch.rand(256, 1, 41, 41, device=dev), torch.rand(256, 1, 41, 41, device=dev)
    plain = VDSR().to(dev)
    opt = torch.optim.Adam(plain.parameters(), 1e-4)

    def plain_step() -> None:
        loss = torch.nn.functional.mse_loss(plain(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()

    trainer = Trainer(TrainConfig(val_dir=None, batch_size=256, device="cuda"), sampler=object())
    xcl, ycl = xb.contiguous(memory_format=torch.channels_last), yb.contiguous(memory_format=torch.channels_last)
    results["train_patches_per_s"] = {
        "eager_fp32": 256 / timed(plain_step, 5),
        "vdsr_train_step": 256 / timed(lambda: trainer.train_step(xcl, ycl), 5),
    }
    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "Set5"
    if shared.is_dir():
        from vdsr.evaluate import evaluate_folder

        fp32 = evaluate_folder(model.float(), shared, [2, 3, 4], tile=None, device="cuda",
                               backend="torch", with_ssim=False)
        results["set5_psnr_bf16_autocast"] = {r.scale: r.psnr for r in fp32}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
