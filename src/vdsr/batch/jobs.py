"""One image of a folder run, and the record of it: :func:`upscale_job` (a problem with the file is a
``failed`` row, not an exception), the rows (:data:`~vdsr.batch.planning.ROW_FIELDS`), the
manifest they are appended to, and what a caller hears (:class:`Events`, :class:`Summary`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vdsr.batch.planning import ROW_FIELDS, Job, Settings
from vdsr.errors import (
    OutputBusy,
    VDSRError,
)


def job_row(job: Job, status: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
    row.update(input=str(job.source), output=str(job.target), status=status, attempt=1,
               finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), worker=_worker_name())
    row.update(values)
    return row


def error_fields(exc: BaseException) -> dict[str, Any]:
    """A row's ``error``, ``error_type`` and ``error_fields`` (the plain-valued ones) for ``exc``."""
    plain = {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, bool, type(None)))}
    return {"error": str(exc), "error_type": type(exc).__name__, "error_fields": plain}


def _worker_name() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def upscale_job(up: Any, job: Job, settings: Settings,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Upscale one image with the :class:`~vdsr.engine.Upscaler` ``up`` and write it atomically;
    the manifest row of what happened. A problem with the file is a ``failed`` row, not an
    exception; the output is then not written (nor anything half-written)."""
    from vdsr.api import write_upscaled
    from vdsr.io.images import load_image

    start = time.perf_counter()
    try:
        image = load_image(job.source, settings.max_pixels, settings.scale, settings.max_output_pixels)
        result = write_upscaled(up, image, job.target, settings.scale,
                                max_output_pixels=settings.max_output_pixels,
                                quality=settings.quality, progress=progress, start=start)
    except VDSRError as exc:
        return job_row(job, "failed", seconds=round(time.perf_counter() - start, 4), **error_fields(exc))
    except MemoryError:
        return job_row(job, "failed", error=f"{job.source}: out of memory",
                    seconds=round(time.perf_counter() - start, 4))
    info = result.run
    return job_row(job, "done", input_size=list(result.input_size), output_size=list(result.output_size),
                seconds=round(result.seconds, 4), backend=info.backend, precision=info.precision,
                recipe=info.recipe, device=info.device)


def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a manifest, oldest first; a line cut short by a kill is passed over."""
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                with contextlib.suppress(ValueError):
                    row = json.loads(line)
                    if isinstance(row, dict) and "output" in row:
                        rows.append(row)
    except FileNotFoundError:
        pass
    return rows


class _Manifest:
    """The manifest of a folder run, opened for appending and locked while the run lasts (a
    second run into the same folder is refused: :class:`OutputBusy`)."""

    def __init__(self, path: Path) -> None:
        import fcntl

        self.path = path
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                self._fh.close()
                raise OutputBusy(str(path.parent), str(path)) from None
            # a file system without locks: go on unlocked
        self._fh.seek(0, os.SEEK_END)
        if self._fh.tell() > 0:
            self._end_torn_line()

    def _end_torn_line(self) -> None:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":  # the last line of a killed run: close it
                self._fh.write("\n")

    def append(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()  # in the kernel's hands: a SIGKILL of this process loses nothing

    def close(self) -> None:
        self._fh.close()


class Events(Protocol):
    """What a caller hears while :func:`run` works (the CLI's progress bar).

    ``started(job)`` when an image is begun, ``tile(job, done, total)`` after each tile of a
    large one (not on Ray), ``finished(row)`` for every row, skipped and failed ones too.
    """

    def started(self, job: Job) -> None: ...

    def tile(self, job: Job, done: int, total: int) -> None: ...

    def finished(self, row: dict[str, Any]) -> None: ...


class NoEvents:
    """:class:`Events` that hear nothing."""

    def started(self, job: Job) -> None:
        pass

    def tile(self, job: Job, done: int, total: int) -> None:
        pass

    def finished(self, row: dict[str, Any]) -> None:
        pass


@dataclass
class Summary:
    """What a run did: its rows (in the order they finished) and its wall time in seconds;
    ``run``: how images were upscaled (:class:`~vdsr.engine.RunInfo`; ``None`` when none
    was); ``removed``: the temp files of a killed run that were cleaned up."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    run: Any = None
    removed: list[Path] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r["status"] == status)

    @property
    def done(self) -> int:
        return self.count("done")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]


def _load(settings: Settings) -> Any:
    from vdsr.weights import load_model

    return load_model(settings.weights)[0]
