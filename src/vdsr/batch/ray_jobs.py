"""Folder jobs on a Ray cluster (``pip install "vdsr[ray]"``): imported only when asked for.

The driver (:func:`run_on_ray`) turns the jobs :func:`vdsr.batch.run` has left to do into a Ray
Dataset of rows (source, target) and maps them, one image a batch, over a pool of
:class:`UpscaleActor` s: each loads the model once, then decodes, upscales and writes its images
itself, atomically, at their target paths (names and sub-folders kept: Ray's own image writer
cannot keep file names), and returns one manifest row per image, which the driver appends to the
manifest as they arrive. So on many machines OUT must be a path that every node sees the same
(a shared file system), and vdsr must be installed on every node.

Actors get one GPU each where the cluster has GPUs (and the device is not ``cpu``), else a share
of the CPUs with as many torch/ONNX Runtime/OpenVINO threads. A killed actor is restarted by Ray
and its image retried (:data:`vdsr.batch.MAX_ATTEMPTS` tries in all); an image that is never
finished becomes a ``failed`` row, and the run goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from vdsr.batch import MAX_ATTEMPTS, Job, Settings, job_row, upscale_job
from vdsr.errors import VDSRError
from vdsr.extras import need
from vdsr.io.outputs import remove_leftovers
from vdsr.quiet import catch_warnings

__all__ = ["UpscaleActor", "run_on_ray"]


class UpscaleActor:
    """A Ray Data callable class: the engine built once per actor, then one row per image."""

    def __init__(self, settings: dict[str, Any]) -> None:
        import torch

        from vdsr.engine import Upscaler
        from vdsr.weights import load_model

        self.settings = Settings(**settings)
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        self.up = Upscaler(load_model(self.settings.weights)[0], **self.settings.engine())

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        rows = []
        for source, target, name in zip(batch["source"], batch["target"], batch["name"], strict=True):
            job = Job(Path(str(source)), Path(str(target)), str(name))
            remove_leftovers([job.target])  # of an earlier try of this image, killed
            row = upscale_job(self.up, job, self.settings)
            row["attempt"] = None  # Ray retries by itself and does not say which try this is
            rows.append(json.dumps(row))
        return {"row": np.array(rows, dtype=object)}


def _connect(address: str | None, threads: int | None) -> bool:
    """Connect to the cluster at ``address``, or start a local one; ``False`` when this process
    was connected already (then it is left connected)."""
    import ray

    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=threads or os.cpu_count() or 1, include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:  # what ray.init raises for these
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VDSRError(f"cannot connect to {where}: {first}") from None
    return True


def _pool(settings: Settings, workers: int) -> tuple[int, dict[str, Any], Settings]:
    """The pool's size, each actor's resources, and the settings an actor runs with."""
    import ray

    return pool_for(ray.cluster_resources(), settings, workers)


def pool_for(resources: dict[str, float], settings: Settings, workers: int) -> tuple[int, dict[str, Any], Settings]:
    """:func:`_pool` for a cluster's ``resources`` (Ray's ``cluster_resources()``): one GPU per
    actor where there are GPUs and the device is not ``cpu`` (one actor per GPU unless ``workers``
    says otherwise), else the CPUs shared out as the actors' threads."""
    gpus = int(resources.get("GPU", 0))
    if gpus and not settings.device.startswith("cpu"):
        size = workers if workers > 1 else gpus
        return size, {"num_gpus": 1, "num_cpus": 1}, replace(settings, device="cuda", threads=None)
    cpus = max(1, int(resources.get("CPU", 1)))
    size = workers if workers > 1 else cpus
    threads = max(1, cpus // size)
    return size, {"num_cpus": threads}, replace(settings, threads=threads)


class OnRay:
    """:class:`vdsr.batch.Remote` on Ray: the cluster at ``address``, or a local one-node cluster
    (``None``); ``workers`` > 1 sets the number of actors."""

    def __init__(self, address: str | None = None, workers: int = 1) -> None:
        self.address, self.workers, self.local = address, workers, address is None

    def __call__(self, pending: list[Job], settings: Settings, emit: Callable[[dict[str, Any]], None]) -> None:
        run_on_ray(pending, settings, self.address, self.workers, emit)


def run_on_ray(pending: list[Job], settings: Settings, address: str | None, workers: int,
               emit: Callable[[dict[str, Any]], None]) -> None:
    """Upscale ``pending`` on Ray (the cluster at ``address``, or a local one-node cluster for
    this run), handing each finished image's row to ``emit``. ``workers`` > 1 sets the number
    of actors (default: one per GPU, else one per CPU)."""
    need("ray.data", "ray")  # here, to say at once when it is missing

    # Ray's driver prints its workers' error messages ("(raylet) Task ... failed ... will be
    # retried") to stdout, where a caller's output goes: send them to stderr while Ray runs
    # (redirect_stdout puts sys.stdout back when the run ends, however it ends).
    with contextlib.redirect_stdout(sys.stderr):
        _run(pending, settings, address, workers, emit)


def _run(pending: list[Job], settings: Settings, address: str | None, workers: int,
         emit: Callable[[dict[str, Any]], None]) -> None:
    import ray
    import ray.data

    started = _connect(address, settings.threads)
    # Ray Data's context and logger are the process's: set for this run, put back after it.
    context = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    saved = (context.enable_progress_bars, context.max_errored_blocks, logger.level)
    try:
        context.enable_progress_bars = False
        context.max_errored_blocks = len(pending)  # an image that keeps failing is one failed row
        logger.setLevel(logging.ERROR)
        size, resources, actor_settings = _pool(settings, workers)
        items = [{"source": str(j.source), "target": str(j.target), "name": j.name} for j in pending]
        data = ray.data.from_items(items, override_num_blocks=len(items))
        with catch_warnings():
            # Ray 2.60 deprecates passing actor options such as max_task_retries this way and
            # offers no other (its default is to retry an image forever).
            warnings.simplefilter("ignore", DeprecationWarning)
            mapped = data.map_batches(
                UpscaleActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=size),
                fn_constructor_kwargs={"settings": asdict(actor_settings)},
                max_restarts=-1, max_task_retries=MAX_ATTEMPTS - 1, **resources)
        seen: set[str] = set()
        for record in mapped.iter_rows():
            row = json.loads(record["row"])
            seen.add(row["output"])
            emit(row)
    finally:
        context.enable_progress_bars, context.max_errored_blocks, level = saved
        logger.setLevel(level)
        if started:
            with contextlib.suppress(Exception):
                ray.shutdown()
    for job in pending:  # tried and lost each time (the actor died on it): say so
        if str(job.target) not in seen:
            remove_leftovers([job.target])
            emit(job_row(job, "failed", error=f"{job.source}: the Ray worker died on it {MAX_ATTEMPTS} times"))
