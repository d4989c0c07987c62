"""Collections: many images, folder trees, runs that survive a kill, several processes.

One run (:func:`plan`, :func:`check`, :func:`run`):

1. :func:`plan` lists the inputs (folders flat, or with ``recursive`` their whole tree, the
   sub-folders mirrored in the output folder) and names every output (:mod:`vdsr.io.outputs`). It
   writes nothing. Hidden files, non-images, links to nowhere or in a loop, links that leave the
   input folder (with ``recursive``; not followed) and this run's own outputs found among the
   inputs (``OUT`` inside ``IN``) are skipped and counted in :attr:`Plan.skipped`.
2. :func:`check` refuses what cannot work before anything is loaded: two inputs writing one
   output, an output folder that cannot be created or written, a single output file that
   exists (unless replacing is asked) or is the input.
3. :func:`run` creates the folders, removes the temp files a killed run left beside its outputs,
   skips the outputs that are there already (complete: every write is atomic), unless
   ``overwrite``, and upscales the rest, in this process, in ``workers`` processes, or on a Ray
   cluster (:mod:`vdsr.batch.ray_jobs`). Each input gets a row in the folder's JSON-lines manifest
   (:data:`MANIFEST`): output, sizes, seconds, how it ran, status and error. A bad file is a
   ``failed`` row; the run goes on.

Rows are plain dicts (:data:`ROW_FIELDS`), the same from every way of running, so a rerun reads
what any earlier run recorded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import signal
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from vdsr.constants import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_PIXELS, DEFAULT_TILE
from vdsr.errors import (
    ImageError,
    OutputBusy,
    OutputExists,
    OutputRefused,
    StopRequested,
    VDSRError,
)
from vdsr.io.outputs import (
    NamingRule,
    check_folder,
    check_format,
    check_target,
    check_unique,
    display,
    make_folders,
    output_is_file,
    remove_leftovers,
)

__all__ = ["MANIFEST", "ROW_FIELDS", "SKIP_REASONS", "Events", "Job", "NoEvents", "Plan", "Settings", "Summary", "job_row",
           "check", "plan", "read_manifest", "run", "upscale_job"]

MANIFEST = "vdsr-manifest.jsonl"
"""The manifest's name in an output folder: one JSON object a line, appended as images finish."""

ROW_FIELDS = ("input", "output", "status", "error", "input_size", "output_size", "seconds",
              "backend", "precision", "recipe", "device", "worker", "attempt", "finished",
              "error_type", "error_fields")
"""A manifest row: ``status`` is ``"done"``, ``"skipped"`` (the output was there already) or
``"failed"`` (``error`` says why; ``error_type`` and ``error_fields`` are the error's class
and its plain fields, for a caller to word it); sizes are ``[width, height]``; ``worker`` the
host and process that ran it; ``attempt`` 1, or more when a worker died on the image and it
was retried."""

SKIP_REASONS: dict[str, str] = {
    "hidden": "hidden",
    "not_image": "not an image",
    "broken_link": "a link to nowhere",
    "link_loop": "a link loop",
    "outside": "a link out of the input folder (not followed)",
    "folder": "a sub-folder (not recursive)",
    "own_output": "an output of this run",
}
"""Why an entry of an input folder is not an input (:attr:`Plan.skipped`), in words."""

MAX_ATTEMPTS = 3  # an image whose worker dies this often is a failed row, not retried again


@dataclass(frozen=True)
class Job:
    """One image to upscale: ``source`` to ``target``; ``name``: the source's path relative to
    the input it was found in (``sub/photo.png``), for messages."""

    source: Path
    target: Path
    name: str


@dataclass
class Plan:
    """The inputs of a run and their outputs (:func:`plan`); nothing is written yet.

    ``single_file``: ``out`` is the one output file (otherwise the output folder);
    ``skipped``: reason (:data:`SKIP_REASONS`) -> the folder entries skipped for it.
    """

    jobs: list[Job]
    out: Path
    single_file: bool
    skipped: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def manifest(self) -> Path | None:
        """The manifest of a folder run (``None`` for one output file)."""
        return None if self.single_file else self.out / MANIFEST


@dataclass(frozen=True)
class Settings:
    """How each image is upscaled: everything a worker process or Ray actor needs (picklable).

    ``threads``: CPU threads in all (``None``: torch's default); split between workers.
    """

    scale: float
    weights: str | None = None
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    tile: int | None = DEFAULT_TILE
    ensemble: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_output_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS
    quality: int = 95
    threads: int | None = None

    def engine(self) -> dict[str, Any]:
        """:class:`vdsr.engine.Upscaler` keyword arguments."""
        return {"device": self.device, "precision": self.precision, "backend": self.backend,
                "tile": self.tile, "ensemble": self.ensemble, "threads": self.threads}


# ----------------------------------------------------------------------------------------------
# planning
# ----------------------------------------------------------------------------------------------


def _image_suffixes() -> tuple[str, ...]:
    from vdsr.io.images import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def _walk(root: Path, recursive: bool, skipped: dict[str, list[Path]]) -> Iterator[tuple[Path, PurePosixPath]]:
    """``(path, path relative to root)`` of the images in ``root`` (sorted by name, sub-folders
    after a folder's own files when ``recursive``); what is passed over goes into ``skipped``."""
    suffixes = _image_suffixes()
    real_root = root.resolve()

    def skip(reason: str, path: Path) -> None:
        skipped.setdefault(reason, []).append(path)

    def visit(folder: Path, rel: PurePosixPath, above: frozenset[Path]) -> Iterator[tuple[Path, PurePosixPath]]:
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            raise ImageError(f"{display(folder)}: cannot read the folder ({exc.strerror})") from None
        folders: list[tuple[Path, PurePosixPath]] = []
        for name in names:
            path, relative = folder / name, rel / name
            if name.startswith("."):
                skip("hidden", path)
                continue
            try:
                info = os.stat(path)  # follows links
            except OSError as exc:
                skip("link_loop" if exc.errno == errno.ELOOP else "broken_link", path)
                continue
            if recursive and path.is_symlink() and not path.resolve().is_relative_to(real_root):
                skip("outside", path)
                continue
            if stat.S_ISDIR(info.st_mode):
                if not recursive:
                    skip("folder", path)
                elif path.resolve() in above:  # a link back up the tree
                    skip("link_loop", path)
                else:
                    folders.append((path, relative))
            elif stat.S_ISREG(info.st_mode) and path.suffix.lower() in suffixes:
                yield path, relative
            else:
                skip("not_image", path)
        for sub, relative in folders:
            yield from visit(sub, relative, above | {sub.resolve()})

    yield from visit(root, PurePosixPath(), frozenset({real_root}))


def plan(inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], rule: NamingRule,
         *, recursive: bool = False) -> Plan:
    """The jobs of ``vdsr upscale INPUTS -o OUTPUT`` (see the module's docstring); writes nothing.

    Raises :class:`~vdsr.errors.OutputNameRefused` (an output name that says neither file nor
    folder), :class:`~vdsr.errors.ImageError` (a missing input, a folder without images) and
    :class:`~vdsr.errors.OutputCollision` (two inputs would write one output).
    """
    if not inputs:
        raise ImageError("no inputs given")
    paths = [Path(p) for p in inputs]
    skipped: dict[str, list[Path]] = {}
    found: list[tuple[Path, PurePosixPath]] = []
    for path in paths:
        if path.is_dir():
            before = len(found)
            found.extend(_walk(path, recursive, skipped))
            if len(found) == before:
                raise ImageError(f"no images found in {display(path)}")
        else:  # a file named on the command line: read (and refused, if it must be) in its turn
            found.append((path, PurePosixPath(path.name)))
    text = os.fspath(output)
    out = Path(text)
    if output_is_file(text, len(paths) == 1 and not paths[0].is_dir()):
        check_format(out, rule.fmt)
        return Plan([Job(paths[0], out, paths[0].name)], out, True)
    jobs = [Job(src, out.joinpath(*rel.parent.parts, rule.name(Path(rel.name).stem)), str(rel))
            for src, rel in found]
    # Our own outputs among the inputs (OUT inside IN, run again): not inputs, however named.
    targets = {os.path.realpath(j.target): j for j in jobs}
    own = [j for j in jobs if targets.get(os.path.realpath(j.source), j) is not j]
    for j in own:
        skipped.setdefault("own_output", []).append(j.source)
    jobs = [j for j in jobs if j not in own]
    check_unique((j.source, j.target) for j in jobs)
    return Plan(jobs, out, False, skipped)


def check(plan: Plan, *, overwrite: bool = False) -> None:
    """Refuse, before any work, what would fail as a whole: a single output file that is the
    input, or exists (without ``overwrite``); an output folder that cannot be written, or
    created (the nearest existing part must be a writable folder). Writes nothing."""
    if plan.single_file:
        job = plan.jobs[0]
        check_target(job.target, overwrite=overwrite, inputs=[job.source])
    else:
        check_folder(plan.out, create=True)


# ----------------------------------------------------------------------------------------------
# one image
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# the manifest
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------


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


def _triage(plan: Plan, overwrite: bool, known: dict[str, dict[str, Any]]
            ) -> tuple[list[Job], list[dict[str, Any]]]:
    """The jobs still to do, and the rows of those that are not: outputs there already
    (skipped; complete, since every write is atomic), outputs that would replace their input or
    a link to nowhere, sub-folders that cannot be made (failed)."""
    pending: list[Job] = []
    rows: list[dict[str, Any]] = []
    for job in plan.jobs:
        try:
            check_target(job.target, overwrite=overwrite, inputs=[job.source], folder_exists=False)
        except OutputExists as exc:
            if exc.link_to is not None or plan.single_file:  # a file asked for by name: not "resumed"
                rows.append(job_row(job, "failed", **error_fields(exc)))
                continue
            earlier = known.get(str(job.target))
            rows.append(job_row(job, "skipped", error=None, **_kept(earlier)))
            continue
        except OutputRefused as exc:
            rows.append(job_row(job, "failed", **error_fields(exc)))
            continue
        if not job.target.parent.is_dir():
            try:
                make_folders([job.target.parent])
            except OutputRefused as exc:
                rows.append(job_row(job, "failed", **error_fields(exc)))
                continue
        pending.append(job)
    return pending, rows


def _kept(earlier: dict[str, Any] | None) -> dict[str, Any]:
    """What a skipped row repeats of the row that wrote its output (sizes, how it ran)."""
    if earlier is None:
        return {}
    return {k: earlier.get(k) for k in ("input_size", "output_size", "backend", "precision", "recipe", "device")}


class Remote(Protocol):
    """Runs pending jobs elsewhere (:class:`vdsr.batch.ray_jobs.OnRay`), handing each row to ``emit``;
    ``local``: on this machine, so the settings' recipe is resolved here first, once."""

    local: bool

    def __call__(self, pending: list[Job], settings: Settings, emit: Callable[[dict[str, Any]], None]) -> None: ...


def run(plan: Plan, settings: Settings, *, overwrite: bool = False, workers: int = 1,
        remote: Remote | None = None, model: Any = None, events: Events | None = None) -> Summary:
    """Do the jobs of ``plan`` (after :func:`check`): see the module's docstring.

    ``workers`` > 1 runs that many processes on this machine (threads split between them,
    outputs byte-equal to one process); ``remote`` runs them on a cluster instead
    (:mod:`vdsr.batch.ray_jobs`). ``model``: the network for this process (loaded
    from ``settings.weights`` when ``None``). On a stop (Ctrl-C, :class:`StopRequested`) the
    image in progress is not written, its temp file is removed, the rows so far are in the
    manifest, and the exception goes on (``events`` has heard every finished row).
    """
    events = events or NoEvents()
    summary = Summary()
    start = time.perf_counter()
    manifest: _Manifest | None = None
    try:
        if plan.manifest is not None:
            make_folders([plan.out])
            manifest = _Manifest(plan.manifest)
        summary.removed = remove_leftovers(j.target for j in plan.jobs)
        known = {r["output"]: r for r in read_manifest(plan.manifest) if r.get("status") == "done"} \
            if plan.manifest is not None else {}
        pending, rows = _triage(plan, overwrite, known)

        def emit(row: dict[str, Any]) -> None:
            summary.rows.append(row)
            if manifest is not None:
                manifest.append(row)
            if summary.run is None and row["status"] == "done":
                summary.run = _run_info(row, settings)
            events.finished(row)

        for row in rows:
            emit(row)
        try:
            if pending and remote is not None:
                remote(pending, _resolved(settings, model) if remote.local else settings, emit)
            elif pending and workers > 1:
                _run_processes(pending, _resolved(settings, model), workers, events, emit)
            elif pending:
                _run_here(pending, settings, model, events, emit, summary)
        except BaseException:
            # Stopped (Ctrl-C, SIGTERM) or failed as a whole: the workers are gone by now; what
            # one of them was writing when it was ended is not left behind.
            remove_leftovers(j.target for j in pending)
            raise
    finally:
        summary.seconds = time.perf_counter() - start
        if manifest is not None:
            manifest.close()
    return summary


def _run_info(row: dict[str, Any], settings: Settings) -> Any:
    from vdsr.engine import RunInfo

    return RunInfo(row["backend"], row["precision"], row["device"], settings.tile, settings.ensemble)


def _resolved(settings: Settings, model: Any) -> Settings:
    """``settings`` with the recipe, runtime and device that ``auto`` picks on this machine, so
    that every worker runs the same (and the check of a recipe runs once, here, not in each)."""
    from vdsr.engine import Upscaler

    if settings.precision != "auto" and settings.backend != "auto" and settings.device != "auto":
        return settings
    info = Upscaler(model if model is not None else _load(settings), **settings.engine()).info
    return replace(settings, precision=info.precision, backend=info.backend, device=info.device)


def _load(settings: Settings) -> Any:
    from vdsr.weights import load_model

    return load_model(settings.weights)[0]


def _run_here(pending: list[Job], settings: Settings, model: Any, events: Events,
              emit: Callable[[dict[str, Any]], None], summary: Summary) -> None:
    """The jobs one after another in this process; the engine is built for the first image."""
    from vdsr.engine import Upscaler

    model = model if model is not None else _load(settings)
    up: Upscaler | None = None

    class _Lazy:  # the recipe check runs only once an image has been read
        @property
        def info(self) -> Any:
            return self.get().info

        def get(self) -> Upscaler:
            nonlocal up
            if up is None:
                up = Upscaler(model, **settings.engine())
            return up

        def blocks(self, *args: Any, **kwargs: Any) -> Any:
            return self.get().blocks(*args, **kwargs)

    lazy = _Lazy()
    for job in pending:
        events.started(job)

        def tile(done: int, total: int, job: Job = job) -> None:
            events.tile(job, done, total)

        row = upscale_job(lazy, job, settings, tile)
        if up is not None and summary.run is None:
            summary.run = up.info  # with the recipe check's result, which rows do not carry
        emit(row)


# ----------------------------------------------------------------------------------------------
# several processes on this machine
# ----------------------------------------------------------------------------------------------


def _split_threads(settings: Settings, workers: int) -> int:
    import torch

    total = settings.threads or torch.get_num_threads()
    return max(1, total // workers)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise StopRequested(signal.Signals(signum).name)


def _end_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (SIGKILL of the main process
    leaves no worker behind writing into the output folder); elsewhere, a worker ends when it
    next hears from the closed pipe."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request was made
        raise StopRequested("SIGTERM")


def _worker(settings: Settings, conn: Any) -> None:
    """A worker process: build the engine once, then upscale what the main process sends, one
    job at a time, answering with tile progress and the job's row."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process says when to stop
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        _end_with_parent()
        import torch

        from vdsr.engine import Upscaler

        if settings.threads:
            torch.set_num_threads(settings.threads)
        try:
            up = Upscaler(_load(settings), **settings.engine())
        except VDSRError as exc:
            conn.send(("fatal", str(exc)))
            return
        conn.send(("ready", os.getpid()))
        while True:
            message = conn.recv()
            if message is None:
                return
            index, job = message

            def tile(done: int, total: int, index: int = index) -> None:
                if total > 1:
                    conn.send(("tile", index, done, total))

            conn.send(("row", index, upscale_job(up, job, settings, tile)))
    except (StopRequested, EOFError, BrokenPipeError):  # stopped, or the main process is gone
        return


def _run_processes(pending: list[Job], settings: Settings, workers: int, events: Events,
                   emit: Callable[[dict[str, Any]], None]) -> None:
    """The jobs on ``workers`` processes, each with its share of the threads and its own engine,
    one job in flight each. A worker that dies (killed, out of memory) is replaced and its image
    retried, up to :data:`MAX_ATTEMPTS` times; what it left half-written is removed first."""
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads (torch, ORT)
    per = replace(settings, threads=_split_threads(settings, workers))
    queue = deque(range(len(pending)))
    attempts = [1] * len(pending)
    procs: dict[int, Any] = {}
    conns: dict[int, Any] = {}
    busy: dict[int, int] = {}
    left = len(pending)
    deaths = 0

    def launch(slot: int) -> None:
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(per, theirs), daemon=True, name=f"vdsr-worker-{slot}")
        proc.start()
        theirs.close()
        procs[slot], conns[slot] = proc, ours

    def dispatch(slot: int) -> None:
        if queue:
            index = queue.popleft()
            busy[slot] = index
            conns[slot].send((index, pending[index]))
            events.started(pending[index])
        else:
            with contextlib.suppress(OSError):
                conns[slot].send(None)

    def died(slot: int) -> None:
        nonlocal left, deaths
        proc = procs.pop(slot)
        conns.pop(slot).close()
        proc.join(5)
        index = busy.pop(slot, None)
        deaths += 1
        code = proc.exitcode
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        if index is not None:
            job = pending[index]
            remove_leftovers([job.target])  # what it was writing
            if attempts[index] >= MAX_ATTEMPTS:
                emit(job_row(job, "failed", error=f"{job.source}: the worker process died on it "
                                                  f"{attempts[index]} times ({how})", attempt=attempts[index]))
                left -= 1
            else:
                attempts[index] += 1
                queue.appendleft(index)
        if deaths > MAX_ATTEMPTS * workers:
            raise VDSRError(f"worker processes keep dying ({how}); stopping")
        if queue:
            launch(slot)

    try:
        for slot in range(min(workers, len(pending))):
            launch(slot)
        while left > 0:
            if not conns:
                raise VDSRError("no worker process is left")
            by_conn = {id(c): s for s, c in conns.items()}
            for ready in wait(list(conns.values()), timeout=1.0):
                slot = by_conn[id(ready)]
                try:
                    message = conns[slot].recv()
                except (EOFError, OSError):
                    died(slot)
                    continue
                kind = message[0]
                if kind == "ready":
                    dispatch(slot)
                elif kind == "tile":
                    events.tile(pending[message[1]], message[2], message[3])
                elif kind == "row":
                    index, row = message[1], message[2]
                    busy.pop(slot, None)
                    row["attempt"] = attempts[index]
                    emit(row)
                    left -= 1
                    dispatch(slot)
                elif kind == "fatal":
                    raise VDSRError(message[1])
    finally:
        # A stop can come while a finished image's row is still in its pipe: the image is written,
        # so its row goes to the manifest before the workers are ended.
        for index, row in _rows_sent(conns, busy):
            row["attempt"] = attempts[index]
            emit(row)
        _stop_workers(procs, conns, [pending[i].target for i in busy.values()])


def _rows_sent(conns: dict[int, Any], busy: dict[int, int]) -> Iterator[tuple[int, dict[str, Any]]]:
    """The rows the workers have sent and the main process has not read yet, as
    ``(index, row)``; each slot's job is taken off ``busy``."""
    for slot, conn in list(conns.items()):
        try:
            while conn.poll(0):
                message = conn.recv()
                if message[0] == "row" and busy.get(slot) == message[1]:
                    del busy[slot]
                    yield message[1], message[2]
        except (EOFError, OSError):
            continue


def _stop_workers(procs: dict[int, Any], conns: dict[int, Any], in_flight: list[Path]) -> None:
    """End the workers: a clean end when they are idle; SIGTERM (their temp files removed on the
    way out), then SIGKILL, when they are not. What they were writing is removed."""
    for conn in conns.values():
        with contextlib.suppress(OSError):
            conn.send(None)
    deadline = time.monotonic() + (0 if in_flight else 5)
    for proc in procs.values():
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs.values():
        if proc.is_alive():
            proc.terminate()
    for proc in procs.values():
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for conn in conns.values():
        conn.close()
    remove_leftovers(in_flight)


def describe_skipped(skipped: dict[str, list[Path]]) -> str:
    """``3 hidden, 1 not an image, 2 links to nowhere (a.png, b.png)``-like words for
    :attr:`Plan.skipped` (empty when nothing was skipped)."""
    parts = []
    for reason, words in SKIP_REASONS.items():
        paths = skipped.get(reason, [])
        if not paths:
            continue
        shown = ", ".join(display(p.name) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
        parts.append(f"{len(paths)} {words} ({shown})")
    return "; ".join(parts)


def row_settings(settings: Settings) -> dict[str, Any]:
    """``settings`` as a plain dict (Ray actors receive it so)."""
    return asdict(settings)
