"""The recipe of a training run: :class:`TrainConfig` and the learning-rate schedule it defines.

Kept apart from the loop (:mod:`vdsr.train.loop`) so the run folder (:mod:`vdsr.train.runfolder`)
can read and write configs without importing the trainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from vdsr.constants import DEFAULT_SCALES, OPTIMIZERS, PRECISIONS, SCHEDULES
from vdsr.errors import VDSRError
from vdsr.model import VDSRConfig

__all__ = ["TrainConfig", "learning_rate_factor"]


@dataclass
class TrainConfig:
    """Everything that defines a training run; JSON-able and stored in the run folder.

    Learning-rate semantics: ``learning_rate`` is per optimiser step of ``batch_size`` patches
    (the global batch in distributed runs). ``clip`` is the gradient value bound for Adam (the
    notes' ``clip_by_value(0.1)``) and theta of the paper's adjustable clipping for SGD, where
    each gradient is clipped to ``[-clip / lr, clip / lr]``.

    ``precision`` is the arithmetic of the forward and backward passes (:mod:`vdsr.precision`,
    :func:`~vdsr.precision.resolve_train_precision`); the trainer replaces ``"auto"`` by what it
    resolved to, so ``config.json`` and the exported weights' recipe name the precision used.
    ``compile`` runs the step's forward, loss and backward through ``torch.compile`` (CUDA graphs
    on a GPU); it changes speed, not the recipe, so a resumed run may switch it.
    """

    run_dir: str = "runs/vdsr"
    train_dirs: list[str] = field(default_factory=lambda: ["../shared/datasets/T91", "../shared/datasets/BSD200"])
    h5: str | None = None
    val_dir: str | None = "../shared/datasets/Set5"
    scales: list[int] = field(default_factory=lambda: list(DEFAULT_SCALES))
    downscales: list[float] = field(default_factory=lambda: [1.0, 0.7, 0.5])
    channels: int = 1
    depth: int = 20
    width: int = 64
    bias: bool = True
    body: str = "plain"
    patch: int = 41
    batch_size: int = 64
    steps: int = 10000
    optimizer: str = "adam"
    learning_rate: float = 1e-4
    schedule: str = "exponential"
    warmup_steps: int = 0
    decay_steps: int = 0  # step/exponential: the period of one x0.1 decay; 0 = half of `steps`
    clip: float = 0.1
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 0 for Adam, the paper's 1e-4 for SGD
    seed: int = 0
    log_every: int = 10
    val_every: int = 500
    checkpoint_every: int = 500
    skip_nonfinite: bool = False
    init_weights: str | None = None
    device: str = "auto"
    threads: int = 0
    precision: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.val_dir is not None and self.val_dir.strip().lower() in ("", "none"):
            self.val_dir = None
        if self.optimizer not in OPTIMIZERS:
            raise VDSRError(f"unknown optimizer {self.optimizer!r}; choose from {OPTIMIZERS}")
        if self.precision not in PRECISIONS:
            raise VDSRError(f"unknown precision {self.precision!r}; choose from {PRECISIONS}")
        if self.schedule not in SCHEDULES:
            raise VDSRError(f"unknown schedule {self.schedule!r}; choose from {SCHEDULES}")
        for name in ("batch_size", "steps", "patch", "log_every", "val_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise VDSRError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise VDSRError(f"learning rate must be positive, got {self.learning_rate}")
        if any(int(s) != s or s < 2 for s in self.scales):
            raise VDSRError(f"training scales must be integers >= 2, got {self.scales}")
        if self.patch < 2 * max(self.scales):
            raise VDSRError(f"patch size {self.patch} is too small for scale {max(self.scales)}")

    def model_config(self) -> VDSRConfig:
        return VDSRConfig(depth=self.depth, width=self.width, channels=self.channels,
                          bias=self.bias, body=self.body)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def learning_rate_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based), warm-up included."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    t = step - config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    period = config.decay_steps or max(1, span // 2)
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        return 0.1 ** (t // period)
    if config.schedule == "exponential":
        return 0.1 ** (t / period)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t / span)))
