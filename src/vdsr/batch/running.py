"""A folder run from start to end (:func:`run`): the manifest opened, leftovers of a killed run
removed, finished outputs skipped, the rest done here, on worker processes, or remotely."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from vdsr.batch.jobs import (
    Events,
    NoEvents,
    Summary,
    _load,
    _Manifest,
    error_fields,
    job_row,
    read_manifest,
    upscale_job,
)
from vdsr.batch.planning import Job, Plan, Settings
from vdsr.batch.processes import _run_processes
from vdsr.errors import (
    OutputExists,
    OutputRefused,
)
from vdsr.io.outputs import (
    check_target,
    make_folders,
    remove_leftovers,
)


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
