"""The training loop: :class:`Trainer` builds a run from a :class:`~vdsr.train.config.TrainConfig`,
takes optimiser steps, logs, validates and checkpoints into its run folder
(:class:`~vdsr.train.runfolder.RunFolder`).

``Trainer(config).fit()`` runs a whole training job into ``config.run_dir``; a stopped or killed
run continues where its last checkpoint left off::

    config, state = RunFolder(run_dir).resume({"steps": 20000})
    Trainer(config, state=state).fit()
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from vdsr.api import upscaler_for
from vdsr.errors import (
    DataError,
    ImageError,
    NonFiniteLoss,
    TrainingError,
    TrainingInputError,
    TrainingInterrupted,
    VDSRError,
    WeightsError,
)
from vdsr.evaluate import EvalConfig, evaluate_folder
from vdsr.io.images import list_images
from vdsr.nn.model import VDSR
from vdsr.precision import torch_dtype
from vdsr.train.config import TrainConfig, learning_rate_factor
from vdsr.train.data import H5Patches, PatchSampler, PatchSource, collect_files, degraded_images
from vdsr.train.distributed import DistContext
from vdsr.train.process import memory_format, pick_device, resolve_train_precision
from vdsr.train.runfolder import RunFolder, model_difference
from vdsr.train.signals import CutShort, StopSignals
from vdsr.weights import load_weights

__all__ = ["Trainer", "check_inputs", "clip_gradients", "make_optimizer", "make_patch_source"]

log = logging.getLogger(__name__)


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


def check_inputs(config: TrainConfig, feed: bool = True) -> list[Path]:
    """Check every input of a run before anything is loaded: the training folders (each must
    hold images; ``feed=False``: the caller brings its own patch source) or the HDF5 file, and
    the validation folder. Returns the training images (``[]`` for an HDF5 feed); raises
    :class:`TrainingInputError` naming the setting."""
    defaults = TrainConfig()
    files: list[Path] = []
    if feed and config.h5:
        if not Path(config.h5).is_file():
            raise TrainingInputError("h5", config.h5, f"{config.h5}: no such file")
    elif feed:
        default = config.train_dirs == defaults.train_dirs
        for folder in config.train_dirs:
            try:
                files += collect_files([folder])
            except DataError as exc:
                raise TrainingInputError("train_dirs", folder, str(exc), default) from None
    if config.val_dir and config.channels == 1:  # validation is on Y only
        try:
            list_images(config.val_dir)
        except ImageError as exc:
            raise TrainingInputError("val_dir", config.val_dir, str(exc),
                                     config.val_dir == defaults.val_dir) from None
    return files


def make_patch_source(config: TrainConfig, files: list[Path] | None = None) -> PatchSource:
    """The training feed ``config`` asks for: an HDF5 patch file, or patches cut on the fly
    from ``files`` (default: the images of ``config.train_dirs``)."""
    if config.h5:
        h5 = H5Patches(config.h5, seed=config.seed)
        if h5.channels != config.channels:
            raise VDSRError(f"{config.h5}: patches have {h5.channels} channels, the model {config.channels}")
        return h5
    files = collect_files(config.train_dirs) if files is None else files
    images = list(degraded_images(files, config.scales, config.channels, config.downscales, config.patch))
    sampler = PatchSampler(images, patch=config.patch, seed=config.seed)
    log.info("on-the-fly data: %d images, %d degraded pieces, %.0f MB in memory",
             len(files), len(images), sampler.nbytes / 1e6)
    return sampler


class Trainer:
    """One training run: builds everything from a :class:`TrainConfig`, steps, logs, saves.

    ``state`` (from :meth:`RunFolder.resume`) continues the run in ``config.run_dir``; without
    it a new run starts there, in a folder :meth:`RunFolder.claim` allows (``overwrite``:
    replace a run, or write beside someone else's files). Nothing is loaded or written before
    that check. The trainer sets no process-wide torch state (threads, global seeds, TF32):
    :func:`vdsr.train.configure_process` does, once, in the program that owns the process.

    ``progress(step, row)`` is called with every row written to ``metrics.csv``.
    ``on_stop_requested(signal_name)`` is called as soon as SIGINT/SIGTERM asks the run to stop
    (from the signal handler: keep it short), so a caller can acknowledge it at once.
    ``stop_on_signals=False`` leaves the process's signal handlers alone (a program that owns
    SIGINT/SIGTERM itself); with ``True`` (the default) :meth:`fit` installs its own while it runs,
    in the main thread only, and restores the previous ones when it returns.
    """

    def __init__(self, config: TrainConfig, *, state: dict[str, Any] | None = None,
                 overwrite: bool = False, sampler: PatchSource | None = None,
                 progress: Callable[[int, dict[str, float]], None] | None = None,
                 dist: DistContext | None = None,
                 on_stop_requested: Callable[[str], None] | None = None,
                 stop_on_signals: bool = True) -> None:
        self.dist = dist or DistContext()
        if config.batch_size % self.dist.world_size:
            raise VDSRError(f"batch size {config.batch_size} does not divide among "
                            f"{self.dist.world_size} processes")
        self.run = RunFolder(config.run_dir)
        # Before anything is loaded or written: may this run write there (RunFolder.claim)?
        self.run.claim(resume=state is not None, overwrite=overwrite)
        self.device = pick_device(config.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        # "auto" becomes the precision used, so config.json and the weights' recipe name it.
        self.precision = resolve_train_precision(config.precision, self.device)
        self.config = config = replace(config, precision=self.precision)
        files = check_inputs(config, feed=sampler is None)  # all of them, before loading any
        # fp16/bf16: autocast (weights and optimiser state stay fp32); fp32/tf32: none.
        low = torch_dtype(self.precision)
        self.autocast_dtype: torch.dtype | None = None if low == torch.float32 else low
        self.memory_format = memory_format(self.device, self.precision)
        # A resumed run's weights come from its checkpoint: its init weights are not read again.
        self.model = self._build_model(None if state is not None else config.init_weights)
        self.net, self.loss_fn = self._wrap_model()
        self.optimizer = make_optimizer(config, self.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: learning_rate_factor(config, s))
        # fp16's 5 exponent bits underflow small gradients: scale the loss (bf16 needs no scaler).
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.sampler: PatchSource = sampler if sampler is not None else make_patch_source(config, files)
        # On a GPU, a source that can cut its patches there does (same draws, no host loop).
        self.device_feed = self.device.type == "cuda" and self.sampler.cuts_on_device
        self.step = 0
        self.best_psnr = -math.inf
        self.best_metrics: dict[str, float] = {}
        self.progress = progress
        self.on_stop_requested = on_stop_requested
        self.stop_on_signals = stop_on_signals
        # Rank 0 alone validates and writes; the others only read their losses back.
        self._report = self._report_main if self.dist.is_main else self._report_worker
        self._pending: list[torch.Tensor] = []  # losses still on the device (read when logging)
        self._started = (0, 0.0)  # (step, time) at which fit() began: the logged rate
        self._validated: tuple[int, dict[str, float]] = (-1, {})  # the last validation's step
        if state is not None:
            self.load_state_dict(state)
        _warn_if_tf32_disagrees(self.device, self.precision)
        log.info("training in %s on %s%s", self.precision, self.device,
                 " (torch.compile)" if config.compile else "")

    def _build_model(self, init_weights: str | None) -> VDSR:
        """The network on the training device, initialised from a generator seeded by
        ``config.seed`` (the process's own generator is left alone), or from ``init_weights``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            model = VDSR(self.config.model_config())
        if init_weights:
            state, meta = load_weights(init_weights)
            if meta.config != model.config:
                have, want = model_difference(meta.config, model.config)
                raise WeightsError(f"{init_weights}: weights of a model with {have}; "
                                   f"this run trains {want}")
            model.load_state_dict(state)
        model = model.to(self.device)
        return model.to(memory_format=self.memory_format)  # type: ignore[call-overload]

    def _wrap_model(self) -> tuple[nn.Module, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """The module the step runs (DDP around the model in a distributed run) and the loss
        function (compiled with ``config.compile``)."""
        net: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = self._forward_loss
        if self.config.compile:
            # On one GPU, CUDA graphs replay the whole forward and backward with one launch each:
            # the eager step is bound by the host queueing its kernels (BENCHMARKS.md).
            mode = "reduce-overhead" if self.device.type == "cuda" and not self.dist.enabled else None
            loss_fn = torch.compile(self._forward_loss, mode=mode)
        return net, loss_fn

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything that continues the run bit-identically, as tensors and plain containers
        (the process's generators too: :func:`vdsr.train.configure_process` sets them back)."""
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
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (as :meth:`RunFolder.resume` returns it)."""
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.sampler.state = json.loads(state["sampler"])
            self.step = int(state["step"])
            self.best_psnr = float(state["best_psnr"])
            self.best_metrics = json.loads(state["best_metrics"])
            if self.scaler is not None and "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise TrainingError(f"checkpoint does not fit this run ({exc})") from None

    # -- one step -----------------------------------------------------------------------------
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

    def _defer_loss_check(self) -> bool:
        """On a GPU, read the loss back only when logging, validating or saving.

        Reading it every step would make the host wait for the GPU before it could queue the next
        step. A non-finite loss is still caught before any weights are written
        (:meth:`_read_losses`); ``skip_nonfinite`` needs the per-step check, so it keeps it.
        """
        return self.device.type == "cuda" and not self.config.skip_nonfinite

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimiser step on ``(x, y)``; returns the detached loss (0-d tensor on the device).

        Without deferral (CPU, or ``skip_nonfinite``) a non-finite loss is caught before the
        update: the step is skipped with ``skip_nonfinite``, otherwise it raises.
        """
        compiled = self.config.compile
        if compiled and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # a new step: earlier graph outputs are done
        loss = self.loss_fn(x, y)
        if compiled:
            # A CUDA graph's outputs are overwritten by its next replay; the loss waits to be read.
            loss = loss.clone()
        if not self._defer_loss_check():
            value = float(loss.detach())
            if not math.isfinite(value):
                if self.config.skip_nonfinite:
                    self.optimizer.zero_grad(set_to_none=True)
                    log.warning("non-finite loss at step %d skipped", self.step + 1)
                    return loss.detach()
                raise NonFiniteLoss(value, self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        self._update(loss)
        return loss.detach()

    def _update(self, loss: torch.Tensor) -> None:
        """Backward, gradient clipping at the current learning rate, optimiser step; with fp16
        through the loss scaler (the true gradients are clipped; an overflowing step is skipped)."""
        learning_rate = float(self.scheduler.get_last_lr()[0])
        if self.scaler is None:
            loss.backward()
            clip_gradients(self.config, self.model, learning_rate)
            self.optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        clip_gradients(self.config, self.model, learning_rate)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """MSE of the network on ``x`` against ``y`` in the run's precision: a 0-d float32 tensor."""
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            out = self.net(x)
        return nn.functional.mse_loss(out.float(), y)

    def _read_losses(self, pending: list[torch.Tensor]) -> NDArray[np.float32]:
        """The finite pending losses (one device read); raises if a deferred one is non-finite."""
        if not pending:
            return np.empty(0, dtype=np.float32)
        values = torch.stack(pending).float().cpu().numpy()
        finite = np.isfinite(values)
        if self._defer_loss_check() and not finite.all():
            first = self.step - len(values) + 1 + int(np.argmin(finite))
            raise NonFiniteLoss(float(values[~finite][0]), first)
        return values[finite]

    def _drain(self, pending: list[torch.Tensor]) -> float:
        """Mean of the finite losses since the last drain, which are then cleared."""
        values = self._read_losses(pending)
        pending.clear()
        return float(values.mean()) if values.size else float("nan")

    # -- validation ---------------------------------------------------------------------------
    def validate(self, should_stop: Callable[[], bool] = lambda: False) -> dict[str, float]:
        """Y-PSNR on ``config.val_dir`` per scale and their mean; ``{}`` without a validation set.

        ``should_stop`` is asked after each (image, scale): once it says yes, validation is cut
        short and returns ``{}``, so a stop request does not wait for the whole set and no
        partial result is recorded.
        """
        c = self.config
        if not c.val_dir or c.channels != 1 or should_stop():
            return {}

        def check(_: str) -> None:
            if should_stop():
                raise CutShort

        self.model.eval()
        try:
            # Validation scores the model exactly (fp32), whatever the training arithmetic.
            upscaler = upscaler_for(self.model, tile=None, device=self.device, backend="torch", precision="fp32")
            results = evaluate_folder(upscaler, c.val_dir, EvalConfig(scales=tuple(c.scales), ssim=False),
                                      progress=check)
        except CutShort:
            return {}
        finally:
            self.model.train()
        metrics = {f"val_psnr_x{r.scale}": r.psnr for r in results}
        metrics["val_psnr_mean"] = float(np.mean([r.psnr for r in results]))
        return metrics

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train from ``self.step`` up to ``config.steps``; returns the best validation metrics.

        After every step :meth:`_report` writes what is due (``metrics.csv`` rows, validation
        and ``best.safetensors``, ``checkpoint.pt``); at the end ``last.safetensors`` gets its
        own step's validation. SIGINT (Ctrl-C) or SIGTERM stops a single-process run at the end
        of the step in progress, with a checkpoint of that step, by :class:`TrainingInterrupted`
        (a second Ctrl-C stops at once).
        """
        c, main = self.config, self.dist.is_main
        if main:
            self.run.start(c, self.step)
            if self.step >= c.steps:  # nothing left to train: validate for last.safetensors now
                self._validated = (self.step, self.validate())
        self.model.train()
        self._pending, self._started = [], (self.step, time.perf_counter())
        try:
            with StopSignals(self.stop_on_signals and not self.dist.enabled, self.on_stop_requested) as stop:
                while self.step < c.steps:
                    learning_rate = float(self.scheduler.get_last_lr()[0])
                    self._pending.append(self.train_step(*self.next_batch()))
                    self.scheduler.step()
                    self.step += 1
                    self._report(learning_rate, stop)
            if main:
                validated_at, metrics = self._validated
                self.run.save_weights("last.safetensors", self.model, c, self.step,
                                      metrics if validated_at == self.step else {})
        finally:
            self.run.close()
        self.dist.barrier()
        return self.best_metrics

    def _due(self, every: int) -> bool:
        """Whether a thing done every ``every`` steps is due now (it always is at the last step)."""
        return self.step % every == 0 or self.step == self.config.steps

    def _report_main(self, learning_rate: float, stop: StopSignals) -> None:
        """After a step on rank 0: log the loss, validate and checkpoint when due, and stop here
        (with a checkpoint of this step) if a signal asked to."""
        c = self.config
        row = self._loss_row(learning_rate) if self._due(c.log_every) else {}
        validation = self._validate_step(stop) if self._due(c.val_every) else {}
        if row or validation:
            self._log({"step": self.step, **row, **validation})
        stopping = stop.requested  # read after validation: a signal may come during it
        if self._due(c.checkpoint_every) or stopping:
            self._checkpoint(plot=bool(validation))
            if stopping and self.step < c.steps:
                raise TrainingInterrupted(stopping, self.step, c.steps, str(self.run.path))

    def _report_worker(self, learning_rate: float, stop: StopSignals) -> None:
        """After a step on another rank: read the losses back when rank 0 logs (it alone writes)."""
        if self._due(self.config.log_every):
            self._drain(self._pending)

    def _loss_row(self, learning_rate: float) -> dict[str, float]:
        """The logged training columns: mean loss since the last row, learning rate, rate, ETA."""
        c, (first_step, t0) = self.config, self._started
        rate = (self.step - first_step) * c.batch_size / max(time.perf_counter() - t0, 1e-9)
        return {"train_loss": self._drain(self._pending), "learning_rate": learning_rate,
                "patches_per_s": rate, "eta_s": (c.steps - self.step) * c.batch_size / max(rate, 1e-9)}

    def _validate_step(self, stop: StopSignals) -> dict[str, float]:
        """This step's validation (``{}`` if a stop request cut it short); ``best.safetensors``
        when it is the best yet."""
        self._read_losses(self._pending)  # never validate weights after a non-finite loss
        metrics = self.validate(should_stop=lambda: stop.requested is not None)
        if not metrics:
            return {}
        self._validated = (self.step, metrics)
        if metrics["val_psnr_mean"] > self.best_psnr:
            self.best_psnr, self.best_metrics = metrics["val_psnr_mean"], metrics
            self.run.save_weights("best.safetensors", self.model, self.config, self.step, metrics)
        return metrics

    def _log(self, row: dict[str, float]) -> None:
        self.run.log(row, self.config.scales)
        if self.progress is not None:
            self.progress(self.step, row)

    def _checkpoint(self, plot: bool) -> None:
        """``checkpoint.pt`` of this step, then (after a validation) ``curve.png``."""
        self._read_losses(self._pending)  # never save weights after a non-finite loss
        self.run.save_checkpoint(self.state_dict())
        if plot:
            self.run.plot(self.step)


def _warn_if_tf32_disagrees(device: torch.device, precision: str) -> None:
    """On CUDA, say so when the process's TF32 switch contradicts the precision recorded."""
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32 != (precision == "tf32"):
        log.warning("training in %s, but this process %s TF32 for cuDNN: call "
                    "vdsr.train.configure_process(config) first", precision,
                    "allows" if torch.backends.cudnn.allow_tf32 else "does not allow")
