"""A training run's folder: everything a run leaves on disk, and how it is read back.

::

    RUN/config.json          the TrainConfig (what --resume reads back)
    RUN/checkpoint.pt        resume state: plain containers, loaded with weights_only=True
    RUN/metrics.csv          one row per logged step: loss, learning rate, rate, validation PSNR
    RUN/tb/                  the same rows as TensorBoard events
    RUN/curve.png            loss and validation PSNR against steps
    RUN/best.safetensors     weights of the best mean validation PSNR so far
    RUN/last.safetensors     weights of the last step

Every file is written atomically (:func:`vdsr.io.fileio.atomic_path`), so a crash leaves the old
file or the new one; the logs are appended a whole row at a time, and a row that cannot be
written whole (a full disk) is cut off again. A write that fails stops the run with
:class:`~vdsr.errors.RunWriteError`, naming the file and the checkpoint that is kept. Only :meth:`RunFolder.start` and the writers create anything; reading a run
back and checking it (:meth:`RunFolder.resume`, :meth:`RunFolder.claim`) writes nothing.

Which folder a run may write into is decided in one place, :meth:`RunFolder.claim`: a new run
takes a folder that does not exist yet, an empty one, or one holding a run of ours that left
nothing to keep (no checkpoint, no weights); a folder holding a run to continue, or anybody
else's files, only when told to overwrite, and then only the run's own files there are
replaced. A resumed run takes only a folder holding a run of ours. Either way the folder must
be writable.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import io
import itertools
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vdsr.constants import RESUME_OVERRIDES
from vdsr.errors import (
    RecipeChanged,
    ResumeOverrideRefused,
    RunFolderRefused,
    RunWriteError,
    TrainingError,
    VDSRError,
    WeightsError,
)
from vdsr.io.fileio import atomic_path
from vdsr.nn.model import VDSR, VDSRConfig
from vdsr.train.config import TrainConfig
from vdsr.weights import WeightsMetadata, check_state_dict
from vdsr.weights import save_weights as write_weights
from vdsr.weights.checkpoints import load_checkpoint

# Recipe keys left out of exported weights' metadata: where and how it ran, not what it learned.
_NOT_RECIPE = ("run_dir", "device", "threads", "log_every", "compile")
# What a new run replaces in its folder (tb/ is kept: a new event file there starts at step 0).
_RUN_FILES = ("checkpoint.pt", "best.safetensors", "last.safetensors", "metrics.csv", "curve.png")
_WEIGHTS = ("best.safetensors", "last.safetensors")
# Keys every config.json that `vdsr train` ever wrote holds (since its first version): a folder
# whose config.json has them is taken for a run of ours. Later fields (h5, precision, compile)
# are not required, so runs of every earlier version are recognised.
_RUN_KEYS = ("run_dir", "train_dirs", "steps", "depth", "width", "learning_rate", "seed")


def csv_fields(scales: list[int]) -> list[str]:
    """Columns of ``metrics.csv`` for a run validated at ``scales``."""
    return (["step", "train_loss", "learning_rate", "patches_per_s", "eta_s"]
            + [f"val_psnr_x{s}" for s in scales] + ["val_psnr_mean"])


def _recipe_changes(trained: TrainConfig, on_disk: TrainConfig,
                    stored: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The recipe fields where ``config.json`` (``on_disk``) differs from the config the
    checkpoint was trained with: every field but the resume overrides and ``run_dir`` (a
    moved folder). Fields the checkpoint's config does not record (written by an earlier
    version), and a recorded ``precision`` of ``"auto"`` (before it was resolved), are not
    compared."""
    changes = {}
    for name in TrainConfig.__dataclass_fields__:
        if name in RESUME_OVERRIDES or name == "run_dir" or name not in stored:
            continue
        if name == "precision" and stored[name] == "auto":
            continue
        old, new = getattr(trained, name), getattr(on_disk, name)
        if old != new:
            changes[name] = (old, new)
    return changes


def _check_writable(path: Path, folder: Path) -> None:
    """Raise :class:`RunFolderRefused` unless files can be created in ``folder`` (for ``path``)."""
    if os.access(folder, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    detail = os.strerror(errno.EROFS if read_only else errno.EACCES).lower()
    raise RunFolderRefused(str(path), "unwritable", blocker=str(folder), detail=detail)


def model_difference(have: VDSRConfig, want: VDSRConfig) -> tuple[str, str]:
    """The fields where two architectures differ, as ``("depth 4, width 8", "depth 6, width 16")``."""
    names = [f.name for f in dataclasses.fields(VDSRConfig) if getattr(have, f.name) != getattr(want, f.name)]
    return (", ".join(f"{n} {getattr(have, n)}" for n in names),
            ", ".join(f"{n} {getattr(want, n)}" for n in names))


class RunFolder:
    """The files of one training run in ``path`` (see the module docstring for the layout)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._events: _EventFile | None = None  # TensorBoard events, opened at the first row
        self._checkpoint_step: int | None = None  # the step of checkpoint.pt on disk, if known
        # What claim() allowed: "new" (replace the run files at start), "resume"; None: unchecked.
        self._claim: str | None = None

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.exists()

    def is_run(self) -> bool:
        """Whether the folder holds a run of ours: a ``config.json`` that `vdsr train` wrote.

        Recognised by its keys (:data:`_RUN_KEYS`), not by a marker, so that run folders of
        every earlier version count; a foreign ``config.json`` has other keys. Reads only.
        """
        try:
            data = json.loads(self.config_path.read_text())
        except (OSError, ValueError):  # missing, unreadable, not JSON, not UTF-8
            return False
        return isinstance(data, dict) and all(key in data for key in _RUN_KEYS)

    # -- the one rule for where a run may write -------------------------------------------------
    def claim(self, *, resume: bool = False, overwrite: bool = False) -> None:
        """Check that a run may write into this folder, before anything is written; writes nothing.

        A new run (``resume=False``) takes a folder that does not exist yet, an empty folder, or
        one holding a run of ours that left nothing to keep (no checkpoint, no weights: it
        died before its first checkpoint). A folder holding a run to continue, a run's weights,
        or anybody else's files is refused unless ``overwrite``; with it only the run's own
        files there (:data:`_RUN_FILES`, ``config.json``, ``tb/``) are replaced, at
        :meth:`start`. A resumed run (``resume=True``; :meth:`resume` has checked its config and
        checkpoint) takes the folder as it is. The folder, or the folder it will be created in,
        must be writable. Raises :class:`RunFolderRefused`.
        """
        path = self.path
        if path.is_symlink() and not path.exists() or path.exists() and not path.is_dir():
            raise RunFolderRefused(str(path), "file")
        if not path.exists():
            parent = path.parent
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            if not parent.is_dir():
                raise RunFolderRefused(str(path), "under_file", blocker=str(parent))
            _check_writable(path, parent)
            self._claim = "new"
            return
        _check_writable(path, path)
        if resume:
            self._claim = "resume"
            return
        names = tuple(sorted(p.name for p in path.iterdir()))
        weights = tuple(n for n in _WEIGHTS if n in names)
        if overwrite or not names or self.is_run() and not self.has_checkpoint() and not weights:
            self._claim = "new"
            return
        if self.is_run():
            if self.has_checkpoint():
                raise RunFolderRefused(str(path), "holds_run")
            raise RunFolderRefused(str(path), "holds_weights", files=weights)
        raise RunFolderRefused(str(path), "not_empty", files=names)

    # -- config -------------------------------------------------------------------------------
    def read_config(self) -> TrainConfig:
        """The run's :class:`TrainConfig`; :class:`VDSRError` if the folder holds none."""
        if not self.config_path.exists():
            raise VDSRError(f"{self.path}: not a training run folder (no config.json)")
        try:
            data = json.loads(self.config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise VDSRError(f"{self.config_path}: not valid JSON") from None
        if not isinstance(data, dict):
            raise VDSRError(f"{self.config_path}: not a training config")
        return TrainConfig.from_dict(data, source=str(self.config_path))

    def write_config(self, config: TrainConfig, step: int = 0) -> None:
        created = not self.path.exists()
        try:
            with self._writing(self.config_path, step):
                self.path.mkdir(parents=True, exist_ok=True)
                with atomic_path(self.config_path) as tmp:
                    tmp.write_text(json.dumps(asdict(config), indent=2))
        except RunWriteError:
            if created:  # a run that could not start leaves no folder behind either
                with contextlib.suppress(OSError):
                    self.path.rmdir()
            raise

    @contextlib.contextmanager
    def _writing(self, path: Path, step: int) -> Iterator[None]:
        """Turn a failed write of ``path`` (disk full, read-only, permission) into
        :class:`RunWriteError`; the writers leave the file as it was."""
        try:
            yield
        except OSError as exc:
            raise RunWriteError(str(path), step, exc.strerror or str(exc), str(self.path),
                                self._checkpoint_step) from None

    def resume(self, overrides: dict[str, Any] | None = None) -> tuple[TrainConfig, dict[str, Any]]:
        """The run's config with ``overrides`` applied, and its checkpoint, both checked.

        ``overrides`` may change only :data:`vdsr.constants.RESUME_OVERRIDES` (how long the run
        goes on, how often it reports, where and how fast it runs), never the recipe: anything
        else is refused with :class:`ResumeOverrideRefused`. ``config.json`` must be valid
        (:class:`InvalidTrainConfig`) and describe the recipe the checkpoint was trained with
        (:class:`RecipeChanged`: an edited learning rate would be ignored, the optimiser's comes
        from the checkpoint, and then recorded as used); the checkpoint must be readable and
        hold a model of that architecture; ``metrics.csv``, if any, must be this run's log.
        Writes nothing: the caller persists the config once training actually continues
        (:meth:`start`).
        """
        overrides = overrides or {}
        refused = tuple(k for k in TrainConfig.__dataclass_fields__ if k in overrides and k not in RESUME_OVERRIDES)
        unknown = tuple(sorted(set(overrides) - set(TrainConfig.__dataclass_fields__)))
        if refused or unknown:
            raise ResumeOverrideRefused(refused + unknown, RESUME_OVERRIDES)
        on_disk = self.read_config()
        config = dataclasses.replace(on_disk, run_dir=str(self.path), **overrides)
        if not self.has_checkpoint():
            raise TrainingError(f"{self.path}: no checkpoint.pt to resume from")
        state = load_checkpoint(self.checkpoint_path)
        try:
            stored = json.loads(state["config"])
            trained = TrainConfig.from_dict(stored)
        except (TypeError, ValueError, VDSRError) as exc:
            raise TrainingError(f"{self.checkpoint_path}: unreadable run config ({exc})") from None
        if trained.model_config() != config.model_config():
            have, want = model_difference(trained.model_config(), config.model_config())
            raise TrainingError(f"{self.checkpoint_path}: holds a model with {have}, but "
                                f"{self.config_path.name} describes {want}")
        changes = _recipe_changes(trained, on_disk, stored)
        if changes:
            raise RecipeChanged(str(self.config_path), self.checkpoint_path.name, changes, RESUME_OVERRIDES)
        try:
            check_state_dict(state["model"], trained.model_config(), self.checkpoint_path)
        except WeightsError as exc:
            raise TrainingError(str(exc)) from None
        self._check_metrics()
        return config, state

    def _check_metrics(self) -> None:
        """``metrics.csv`` must be a log this run can cut back and append to (ours, readable)."""
        if not self.metrics_path.exists():
            return
        try:
            with open(self.metrics_path, newline="") as fh:
                reader = csv.DictReader(fh)
                for row in reader:
                    int(row["step"])
            if reader.fieldnames is None or reader.fieldnames[:2] != ["step", "train_loss"]:
                raise ValueError("not the columns of a training log")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, csv.Error) as exc:
            raise TrainingError(f"{self.metrics_path}: not this run's training log ({exc})") from None

    # -- checkpoint ---------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        """Write ``state`` (plain containers and tensors) atomically; the old file stays on error.

        The checkpoint is serialised in memory first and written as plain bytes: ``torch.save``
        into a file reports a full disk as ``RuntimeError: [enforce fail at
        inline_container.cc] unexpected pos``, a plain write as ``OSError(ENOSPC)``, which
        becomes :class:`RunWriteError`.
        """
        path, step = self.checkpoint_path, int(state["step"])
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with self._writing(path, step), atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getbuffer())
        self._checkpoint_step = step
        return path

    def load_checkpoint(self) -> dict[str, Any]:
        return load_checkpoint(self.checkpoint_path)

    # -- metrics ------------------------------------------------------------------------------
    def start(self, config: TrainConfig, step: int) -> None:
        """Make the claimed folder (:meth:`claim`) ready for training from ``step``: write
        ``config.json`` and drop the metrics rows after ``step`` (logged by a run killed after
        its last checkpoint), so the log matches the state.

        A new run replaces the run files a previous run left there (checkpoint, weights, log,
        curve), so that a new run killed before its first checkpoint cannot be resumed from the
        old run's state under the new config. From then on the folder holds this run.
        """
        if self._claim is None:
            raise TrainingError(f"{self.path}: the run folder was not checked before writing "
                                "(RunFolder.claim)")
        if self._claim == "new":
            for name in _RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
        else:
            self._checkpoint_step = step if self.has_checkpoint() else None
        self.write_config(config, step)
        with self._writing(self.metrics_path, step):
            self.truncate_metrics(step, config.scales)
        self._claim = "resume"

    def truncate_metrics(self, step: int, scales: list[int]) -> None:
        """Keep only the rows of ``metrics.csv`` at or before ``step``."""
        if not self.metrics_path.exists():
            return
        with open(self.metrics_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        keep = [r for r in rows if int(r["step"]) <= step]
        if len(keep) == len(rows):
            return
        with atomic_path(self.metrics_path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=csv_fields(scales))
            writer.writeheader()
            writer.writerows(keep)

    def log(self, row: dict[str, float], scales: list[int]) -> None:
        """Append ``row`` (``step`` plus any of :func:`csv_fields`) to ``metrics.csv`` and to
        TensorBoard (``train_loss`` is shown as ``train/loss``), each whole or not at all."""
        step = int(row["step"])
        fields = csv_fields(scales)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields)
        if not self.metrics_path.exists():
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in fields})
        with self._writing(self.metrics_path, step):
            append_whole(self.metrics_path, text.getvalue().encode())
        if self._events is None:
            # purge_step: a resumed run hides the events a killed run logged after its
            # checkpoint, as truncate_metrics does for the CSV.
            self._events = _EventFile(self.path / "tb", purge_step=step)
        scalars = {k.replace("_", "/", 1): float(v) for k, v in row.items()
                   if k != "step" and v != "" and v is not None}
        with self._writing(self._events.path, step):
            self._events.write(step, scalars)

    def plot(self, step: int) -> None:
        """Draw ``curve.png`` from ``metrics.csv``."""
        from vdsr.plots import training_curve

        with self._writing(self.path / "curve.png", step):
            training_curve(self.metrics_path, self.path / "curve.png")

    def close(self) -> None:
        """Forget the TensorBoard event file; the next :meth:`log` starts a new one."""
        self._events = None

    # -- weights ------------------------------------------------------------------------------
    def save_weights(self, name: str, model: VDSR, config: TrainConfig, step: int,
                     metrics: dict[str, float]) -> Path:
        """Write ``model``'s weights to ``name`` (``best``/``last.safetensors``) with the recipe,
        the step and the validation ``metrics`` in their metadata."""
        meta = WeightsMetadata(
            config=model.config,
            scales=list(config.scales),
            source=f"trained by `vdsr train` ({self.path.name}), step {step}",
            recipe={k: v for k, v in asdict(config).items() if k not in _NOT_RECIPE}
            | {"trained_steps": step},
            metrics={"validation": Path(config.val_dir).name if config.val_dir else None, **metrics},
        )
        path = self.path / name
        with self._writing(path, step):
            write_weights(path, model.state_dict(), meta)
        return path


def append_whole(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` whole or not at all: when a write fails part-way (a full
    disk takes what fits, then refuses), the file is cut back to its old length (and a file
    this call created is removed), and the error raised."""
    existed = path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            os.ftruncate(fd, size)
            if not existed:
                path.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)


_EVENT_FILES = itertools.count()


class _EventFile:
    """TensorBoard scalars in ``folder``, written by the training thread itself.

    torch's ``SummaryWriter`` writes from a thread of its own: on a full disk that thread dies
    with a traceback on stderr and leaves a half-written record. Here each row is one append
    (:func:`append_whole`) of TensorBoard's own record framing, and its failure is raised to
    the caller. The file begins, as ``SummaryWriter(purge_step=...)``'s does, with a session
    start at ``purge_step``, so that TensorBoard hides the events a killed run wrote past it.
    Without tensorboard installed (a declared dependency) nothing is written.
    """

    def __init__(self, folder: Path, purge_step: int) -> None:
        self.path = folder / (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
                              f".{os.getpid()}.{next(_EVENT_FILES)}")
        try:
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        except ImportError:
            self._head: bytes | None = None
            return
        now = time.time()
        self._head = b"".join(_record(e) for e in (
            Event(wall_time=now, file_version="brain.Event:2"),
            Event(wall_time=now, step=purge_step, file_version="brain.Event:2"),
            Event(wall_time=now, step=purge_step, session_log=SessionLog(status=SessionLog.START))))
        self._started = False

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self._head is None:
            return
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        event = Event(wall_time=time.time(), step=step, summary=Summary(
            value=[Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]))
        data = _record(event) if self._started else self._head + _record(event)
        self.path.parent.mkdir(exist_ok=True)
        append_whole(self.path, data)
        self._started = True


def _record(event: Any) -> bytes:
    """One TensorBoard record: the event in TFRecord framing (length, CRCs)."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    buffer = io.BytesIO()
    RecordWriter(buffer).write(event.SerializeToString())
    return buffer.getvalue()
