"""Constants shared by the library, the CLI and the server: each is defined here and only here.

This module imports nothing, so the CLI can read defaults (and ``vdsr --help`` can show them)
without importing torch.
"""

from __future__ import annotations

__version__ = "0.2.0"

BODIES: tuple[str, ...] = ("plain", "residual", "dense", "inception")  # VDSR bodies (vdsr.nn.model)
DEFAULT_SCALES: tuple[int, ...] = (2, 3, 4)  # the scales the paper trains and reports
MAX_SCALE = 16.0  # larger factors are refused: VDSR only sharpens a bicubic upscale
DEFAULT_TILE = 352  # network input side: 1024² -> 2048² with ONNX Runtime mixed peaked at 405 MB (384: 470 MB, over the memory bound; 320: 395 MB), 3 % slower than 384 (measured, session 6)
DEFAULT_MAX_PIXELS = 64_000_000  # input pixels: ~8000x8000, below a decompression bomb
DEFAULT_MAX_OUTPUT_PIXELS = 256_000_000  # output pixels (input x scale^2): ~16000x16000
SERVER_MAX_PIXELS = 16_000_000
SERVER_MAX_OUTPUT_PIXELS = 64_000_000
SERVER_MAX_UPLOAD_MB = 20
SERVER_PREVIEW_JOBS = 2  # bicubic previews computed at once by `vdsr serve` (own lane, bounded memory)
SERVER_MAX_QUEUE = 32  # VDSR jobs waiting on `vdsr serve`; uploads are held in memory meanwhile

# Inference runtimes ("backends"); "auto" picks the one measured fastest for the recipe (vdsr.backends).
BACKENDS: tuple[str, ...] = ("auto", "torch", "compile", "onnxruntime", "openvino")
# Recipes: how the network's arithmetic is done (vdsr.precision). "auto" is the fastest recipe
# checked for the weights in use on this machine (vdsr.recipes); fp32 is exact.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "tf32", "fp16", "bf16", "bf16-edge", "mixed", "int8")
# What training can run in (autocast dtypes; vdsr.train.process.resolve_train_precision).
TRAIN_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "tf32", "fp16", "bf16")
# Backend names of earlier releases that were recipes: `--backend int8` is `--precision int8`.
LEGACY_BACKENDS: tuple[str, ...] = ("int8", "mixed")

# Training: the optimisers and learning-rate schedules `vdsr train` offers, and what a resumed
# run may change (how long it goes on and how often it reports, never the recipe).
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
SCHEDULES: tuple[str, ...] = ("constant", "step", "exponential", "cosine")
RESUME_OVERRIDES: tuple[str, ...] = ("steps", "val_every", "checkpoint_every", "log_every",
                                     "threads", "device", "compile")
