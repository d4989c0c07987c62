"""Training VDSR: the notes' pipeline (41x41 bicubic patches, 20 layers, Adam + clipping,
checkpoints every N steps) made real, resumable bit-for-bit, and logged.

``Trainer(config).fit()`` runs a whole training job into ``config.run_dir``:

* ``config.json``: the :class:`TrainConfig` (a resumed run reads it back);
* ``checkpoint.pt``: model, optimiser, schedule, step and every RNG state, written atomically
  every ``checkpoint_every`` steps and at the end; loaded with ``weights_only=True``;
* ``metrics.csv``, TensorBoard event files and ``curve.png`` (loss and validation PSNR);
* ``best.safetensors`` (best mean validation PSNR) and ``last.safetensors``, in the package's
  weights format with the recipe and measured PSNR in the metadata.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from vdsr.data import H5Patches, PatchSampler, collect_files, degraded_images
from vdsr.distributed import DistContext
from vdsr.errors import TrainingError, TrainingInterrupted, VDSRError
from vdsr.evaluate import evaluate_folder
from vdsr.fileio import atomic_path
from vdsr.model import VDSR, VDSRConfig
from vdsr.weights import WeightsMetadata, load_resume_state, load_weights, save_weights

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "step", "exponential", "cosine")


@dataclass
class TrainConfig:
    """Everything that defines a training run; JSON-able and stored in the run folder.

    Learning-rate semantics: ``learning_rate`` is per optimiser step of ``batch_size`` patches
    (the global batch in distributed runs). ``clip`` is the gradient value bound for Adam (the
    notes' ``clip_by_value(0.1)``) and theta of the paper's adjustable clipping for SGD, where
    each gradient is clipped to ``[-clip / lr, clip / lr]``.
    """

    run_dir: str = "runs/vdsr"
    train_dirs: list[str] = field(default_factory=lambda: ["../shared/datasets/T91", "../shared/datasets/BSD200"])
    h5: str | None = None
    val_dir: str | None = "../shared/datasets/Set5"
    scales: list[int] = field(default_factory=lambda: [2, 3, 4])
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

    def __post_init__(self) -> None:
        if self.val_dir is not None and self.val_dir.strip().lower() in ("", "none"):
            self.val_dir = None
        if self.optimizer not in OPTIMIZERS:
            raise VDSRError(f"unknown optimizer {self.optimizer!r}; choose from {OPTIMIZERS}")
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


def lr_factor(config: TrainConfig, step: int) -> float:
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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VDSRError("CUDA was asked for but is not available")
    return torch.device(name)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate,
                                weight_decay=config.weight_decay or 0.0)
    decay = 1e-4 if config.weight_decay is None else config.weight_decay
    return torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                           weight_decay=decay)


def clip_gradients(config: TrainConfig, model: nn.Module, current_lr: float) -> None:
    """Adam: clip each gradient value to ±clip. SGD: the paper's adjustable clipping, ±clip/lr."""
    if config.clip <= 0:
        return
    bound = config.clip if config.optimizer == "adam" else config.clip / current_lr
    torch.nn.utils.clip_grad_value_(model.parameters(), bound)


class Trainer:
    """One training run: builds everything from a :class:`TrainConfig`, steps, logs, saves."""

    def __init__(self, config: TrainConfig, sampler: Any = None,
                 progress: Callable[[int, dict[str, float]], None] | None = None,
                 dist: DistContext | None = None) -> None:
        self.config = config
        self.dist = dist or DistContext()
        if config.batch_size % self.dist.world_size:
            raise VDSRError(f"batch size {config.batch_size} does not divide among "
                            f"{self.dist.world_size} processes")
        self.run_dir = Path(config.run_dir)
        self.device = pick_device(config.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.model = VDSR(config.model_config()).to(self.device)
        if config.init_weights:
            state, meta = load_weights(config.init_weights)
            if meta.config != self.model.config:
                raise VDSRError(f"{config.init_weights}: architecture {meta.config} differs from the run's")
            self.model.load_state_dict(state)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch shapes: autotune once, reuse
        # channels_last pays on GPUs (tensor cores); on CPU training it measured slightly slower.
        self.memory_format = (torch.channels_last if self.device.type == "cuda"
                              else torch.contiguous_format)
        self.model = self.model.to(memory_format=self.memory_format)  # type: ignore[call-overload]
        self.net: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = make_optimizer(config, self.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(config, s))
        self.sampler = sampler if sampler is not None else self._make_sampler()
        # On a GPU, cut patches there (PatchSampler.batch_tensors): same draws, no host loop.
        self.device_feed = self.device.type == "cuda" and hasattr(self.sampler, "batch_tensors")
        self.step = 0
        self.best_psnr = -math.inf
        self.best_metrics: dict[str, float] = {}
        self.progress = progress
        self._writer: Any = None

    # -- data ---------------------------------------------------------------------------------
    def _make_sampler(self) -> Any:
        c = self.config
        if c.h5:
            h5 = H5Patches(c.h5, seed=c.seed)
            if h5.channels != c.channels:
                raise VDSRError(f"{c.h5}: patches have {h5.channels} channels, the model {c.channels}")
            return h5
        files = collect_files(c.train_dirs)
        images = list(degraded_images(files, c.scales, c.channels, c.downscales, c.patch))
        sampler = PatchSampler(images, patch=c.patch, seed=c.seed)
        log.info("on-the-fly data: %d images, %d degraded pieces, %.0f MB in memory",
                 len(files), len(images), sampler.nbytes / 1e6)
        return sampler

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": json.dumps(self.sampler.state),
            "torch_rng": torch.get_rng_state(),
            "python_rng": json.dumps(random.getstate()),
            "best_psnr": self.best_psnr,
            "best_metrics": json.dumps(self.best_metrics),
            "config": json.dumps(asdict(self.config)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.sampler.state = json.loads(state["sampler"])
            torch.set_rng_state(state["torch_rng"])
            py = json.loads(state["python_rng"])
            random.setstate((py[0], tuple(py[1]), py[2]))
            self.step = int(state["step"])
            self.best_psnr = float(state["best_psnr"])
            self.best_metrics = json.loads(state["best_metrics"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise TrainingError(f"checkpoint does not fit this run ({exc})") from None

    def save_checkpoint(self) -> Path:
        path = self.run_dir / "checkpoint.pt"
        try:
            with atomic_path(path) as tmp:
                torch.save(self.state_dict(), tmp)
        except OSError as exc:
            raise TrainingError(
                f"{path}: could not write checkpoint at step {self.step} ({exc.strerror or exc}); "
                "the previous checkpoint is kept"
            ) from None
        return path

    def resume(self) -> None:
        path = self.run_dir / "checkpoint.pt"
        self.load_state_dict(load_resume_state(path))
        if self.dist.is_main:
            self._truncate_csv()

    # -- logging ------------------------------------------------------------------------------
    def _csv_path(self) -> Path:
        return self.run_dir / "metrics.csv"

    def _truncate_csv(self) -> None:
        """Drop rows a killed run logged after its last checkpoint, so the log matches the state."""
        path = self._csv_path()
        if not path.exists():
            return
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        keep = [r for r in rows if int(r["step"]) <= self.step]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=csv_fields(self.config.scales))
            writer.writeheader()
            writer.writerows(keep)

    def _log_row(self, row: dict[str, float]) -> None:
        path = self._csv_path()
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=csv_fields(self.config.scales))
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in csv_fields(self.config.scales)})
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step)
            except ImportError:  # tensorboard is a declared dependency; tolerate its absence
                self._writer = False
        if self._writer:
            for k, v in row.items():
                if k != "step" and v != "" and v is not None:
                    self._writer.add_scalar(k.replace("_", "/", 1), v, self.step)
            self._writer.flush()

    # -- validation and export ----------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        c = self.config
        if not c.val_dir or c.channels != 1:
            return {}
        self.model.eval()
        try:
            results = evaluate_folder(self.model, c.val_dir, c.scales, tile=None,
                                      device=str(self.device), with_ssim=False, backend="torch")
        finally:
            self.model.train()
        metrics = {f"val_psnr_x{r.scale}": r.psnr for r in results}
        metrics["val_psnr_mean"] = float(np.mean([r.psnr for r in results]))
        return metrics

    def export(self, name: str, metrics: dict[str, float]) -> Path:
        c = self.config
        meta = WeightsMetadata(
            config=self.model.config,
            scales=list(c.scales),
            source=f"trained by `vdsr train` ({self.run_dir.name}), step {self.step}",
            recipe={k: v for k, v in asdict(c).items()
                    if k not in ("run_dir", "device", "threads", "log_every")} | {"trained_steps": self.step},
            metrics={"validation": Path(c.val_dir).name if c.val_dir else None, **metrics},
        )
        path = self.run_dir / name
        save_weights(path, self.model.state_dict(), meta)
        return path

    def plot(self) -> None:
        from vdsr.plots import training_curve

        training_curve(self._csv_path(), self.run_dir / "curve.png")

    # -- the loop -----------------------------------------------------------------------------
    def _defer_loss_check(self) -> bool:
        """On a GPU, read the loss back only when logging, validating or saving.

        Reading it every step would make the host wait for the GPU before it could queue the next
        step. A non-finite loss is still caught before any weights are written (``_drain``);
        ``skip_nonfinite`` needs the per-step check, so it keeps it.
        """
        return self.device.type == "cuda" and not self.config.skip_nonfinite

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimiser step on ``(x, y)``; returns the detached loss (0-d tensor on the device).

        Without deferral (CPU, or ``skip_nonfinite``) a non-finite loss is caught before the
        update: the step is skipped with ``skip_nonfinite``, otherwise it raises.
        """
        use_amp = self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = self.net(x)
        loss = nn.functional.mse_loss(out.float(), y)
        if not self._defer_loss_check():
            value = float(loss.detach())
            if not math.isfinite(value):
                if self.config.skip_nonfinite:
                    self.optimizer.zero_grad(set_to_none=True)
                    log.warning("non-finite loss at step %d skipped", self.step + 1)
                    return loss.detach()
                raise self._nonfinite(value, f"at step {self.step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.config, self.model, float(self.scheduler.get_last_lr()[0]))
        self.optimizer.step()
        return loss.detach()

    @staticmethod
    def _nonfinite(value: float, where: str) -> TrainingError:
        return TrainingError(
            f"loss became {value} {where}; stopping without saving non-finite "
            "weights (lower the learning rate, or pass --skip-nonfinite)"
        )

    def _read_losses(self, pending: list[torch.Tensor]) -> NDArray[np.float32]:
        """The finite pending losses (one device read); raises if a deferred one is non-finite."""
        if not pending:
            return np.empty(0, dtype=np.float32)
        values = torch.stack(pending).float().cpu().numpy()
        finite = np.isfinite(values)
        if self._defer_loss_check() and not finite.all():
            first = self.step - len(values) + 1 + int(np.argmin(finite))
            raise self._nonfinite(float(values[~finite][0]), f"at step {first}")
        return values[finite]

    def _drain(self, pending: list[torch.Tensor]) -> float:
        """Mean of the finite losses since the last drain, which are then cleared."""
        values = self._read_losses(pending)
        pending.clear()
        return float(values.mean()) if values.size else float("nan")

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(inputs, targets)`` batch on the training device, in its memory format."""
        c = self.config
        part = self.dist.shard(c.batch_size) if self.dist.enabled else None
        if self.device_feed:
            x, y = self.sampler.batch_tensors(c.batch_size, part, self.device)
        else:
            xb, yb = self.sampler.batch(c.batch_size, part)
            x = torch.from_numpy(xb).to(self.device, non_blocking=True)
            y = torch.from_numpy(yb).to(self.device, non_blocking=True)
        return (x.contiguous(memory_format=self.memory_format),
                y.contiguous(memory_format=self.memory_format))

    def fit(self) -> dict[str, float]:
        """Train up to ``config.steps``; returns the best validation metrics.

        In a single-process run, SIGINT (Ctrl-C) or SIGTERM stops it cleanly at the end of the
        step in progress: a checkpoint is written and :class:`TrainingInterrupted` raised, so
        ``--resume`` continues exactly there. A second Ctrl-C stops at once.
        """
        try:
            with _StopSignals(enabled=not self.dist.enabled) as stop:
                return self._fit(stop)
        finally:
            if self._writer:
                self._writer.close()
            self._writer = None

    def _fit(self, stop: _StopSignals) -> dict[str, float]:
        c = self.config
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.model.train()
        pending: list[torch.Tensor] = []
        seen = 0
        t0 = time.perf_counter()
        start_step = self.step
        final: dict[str, float] = {}  # validation of the last step: last.safetensors metadata
        while self.step < c.steps:
            x, y = self.next_batch()
            pending.append(self.train_step(x, y))
            lr = float(self.scheduler.get_last_lr()[0])
            self.scheduler.step()
            self.step += 1
            seen += c.batch_size
            row: dict[str, float] = {}
            if self.step % c.log_every == 0 or self.step == c.steps:
                loss = self._drain(pending)
                elapsed = time.perf_counter() - t0
                rate = seen / max(elapsed, 1e-9)
                row.update(step=self.step, train_loss=loss, learning_rate=lr, patches_per_s=rate,
                           eta_s=(c.steps - self.step) * c.batch_size / max(rate, 1e-9))
            if not self.dist.is_main:
                continue
            validate = self.step % c.val_every == 0 or self.step == c.steps
            checkpoint = (self.step % c.checkpoint_every == 0 or self.step == c.steps
                          or stop.requested is not None)
            if validate or checkpoint:
                self._read_losses(pending)  # never validate or save weights after a non-finite loss
            if validate:
                metrics = self.validate()
                row.update(step=self.step, **metrics)
                if self.step == c.steps:
                    final = metrics
                if metrics and metrics["val_psnr_mean"] > self.best_psnr:
                    self.best_psnr = metrics["val_psnr_mean"]
                    self.best_metrics = metrics
                    self.export("best.safetensors", metrics)
            if row:
                self._log_row(row)
                if self.progress is not None:
                    self.progress(self.step, row)
            if checkpoint:
                if "val_psnr_mean" in row:
                    self.plot()
                self.save_checkpoint()
            if stop.requested and self.step < c.steps:
                raise TrainingInterrupted(
                    f"stopped by {stop.requested} at step {self.step} of {c.steps}; checkpoint "
                    f"saved: continue with --resume {self.run_dir}"
                )
        if self.dist.is_main:
            if self.step == start_step:  # nothing left to train: validate the weights as they are
                final = self.validate()
            self.export("last.safetensors", final)  # its own validation, not the best step's
        self.dist.barrier()
        return self.best_metrics


class _StopSignals:
    """Turns SIGINT/SIGTERM into a request to stop at the next step boundary (main thread only).

    ``requested`` names the signal once one arrived. A second SIGINT raises KeyboardInterrupt at
    once, for a user who does not want to wait for the step to end.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> _StopSignals:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def csv_fields(scales: list[int]) -> list[str]:
    return (["step", "train_loss", "learning_rate", "patches_per_s", "eta_s"]
            + [f"val_psnr_x{s}" for s in scales] + ["val_psnr_mean"])


def write_config(config: TrainConfig) -> None:
    run = Path(config.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    with atomic_path(run / "config.json") as tmp:
        tmp.write_text(json.dumps(asdict(config), indent=2))


def read_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise VDSRError(f"{run_dir}: not a training run folder (no config.json)")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError:
        raise VDSRError(f"{path}: not valid JSON") from None
