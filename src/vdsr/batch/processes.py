"""A folder run on several processes of this machine: each worker has its share of the threads and
its own engine, one job in flight; a worker that dies is replaced and its image retried
(:data:`~vdsr.batch.planning.MAX_ATTEMPTS`); outputs are byte-equal to one process."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from vdsr.batch.jobs import Events, _load, job_row, upscale_job
from vdsr.batch.planning import MAX_ATTEMPTS, Job, Settings
from vdsr.errors import (
    StopRequested,
    VDSRError,
)
from vdsr.io.outputs import (
    remove_leftovers,
)


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

    pool = _Pool(pending, replace(settings, threads=_split_threads(settings, workers)), workers, events, emit)
    try:
        for slot in range(min(workers, len(pending))):
            pool.launch(slot)
        while pool.left > 0:
            if not pool.conns:
                raise VDSRError("no worker process is left")
            by_conn = {id(c): s for s, c in pool.conns.items()}
            for ready in wait(list(pool.conns.values()), timeout=1.0):
                pool.receive(by_conn[id(ready)])
    finally:
        pool.close()


class _Pool:
    """The worker processes of one run (by slot: process, pipe, the job it does) and the jobs'
    state: those still queued, each one's attempt, how many are left."""

    def __init__(self, pending: list[Job], settings: Settings, workers: int, events: Events,
                 emit: Callable[[dict[str, Any]], None]) -> None:
        self.ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads (torch, ORT)
        self.pending, self.settings, self.workers, self.events, self.emit = pending, settings, workers, events, emit
        self.queue = deque(range(len(pending)))
        self.attempts = [1] * len(pending)
        self.procs: dict[int, Any] = {}
        self.conns: dict[int, Any] = {}
        self.busy: dict[int, int] = {}
        self.left = len(pending)
        self.deaths = 0

    def launch(self, slot: int) -> None:
        ours, theirs = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(self.settings, theirs), daemon=True,
                                name=f"vdsr-worker-{slot}")
        proc.start()
        theirs.close()
        self.procs[slot], self.conns[slot] = proc, ours

    def receive(self, slot: int) -> None:
        """Act on the next message of the worker in ``slot``: ready, tile progress, a row, a
        fatal error (its engine cannot be built), or its death (the pipe closed)."""
        try:
            message = self.conns[slot].recv()
        except (EOFError, OSError):
            self.died(slot)
            return
        kind = message[0]
        if kind == "ready":
            self.dispatch(slot)
        elif kind == "tile":
            self.events.tile(self.pending[message[1]], message[2], message[3])
        elif kind == "row":
            self.busy.pop(slot, None)
            self.finished(message[1], message[2])
            self.dispatch(slot)
        elif kind == "fatal":
            raise VDSRError(message[1])

    def finished(self, index: int, row: dict[str, Any]) -> None:
        row["attempt"] = self.attempts[index]
        self.emit(row)
        self.left -= 1

    def dispatch(self, slot: int) -> None:
        if self.queue:
            index = self.queue.popleft()
            self.busy[slot] = index
            self.conns[slot].send((index, self.pending[index]))
            self.events.started(self.pending[index])
        else:
            with contextlib.suppress(OSError):
                self.conns[slot].send(None)

    def died(self, slot: int) -> None:
        """The worker in ``slot`` is gone: its image is retried (or failed after
        :data:`MAX_ATTEMPTS`), its half-written output removed, and the slot relaunched."""
        proc = self.procs.pop(slot)
        self.conns.pop(slot).close()
        proc.join(5)
        index = self.busy.pop(slot, None)
        self.deaths += 1
        code = proc.exitcode
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        if index is not None:
            job = self.pending[index]
            remove_leftovers([job.target])  # what it was writing
            if self.attempts[index] >= MAX_ATTEMPTS:
                self.emit(job_row(job, "failed", error=f"{job.source}: the worker process died on it "
                                                       f"{self.attempts[index]} times ({how})",
                                  attempt=self.attempts[index]))
                self.left -= 1
            else:
                self.attempts[index] += 1
                self.queue.appendleft(index)
        if self.deaths > MAX_ATTEMPTS * self.workers:
            raise VDSRError(f"worker processes keep dying ({how}); stopping")
        if self.queue:
            self.launch(slot)

    def close(self) -> None:
        """End the workers. A stop can come while a finished image's row is still in its pipe:
        the image is written, so its row goes to the manifest before the workers are ended."""
        for index, row in _rows_sent(self.conns, self.busy):
            row["attempt"] = self.attempts[index]
            self.emit(row)
        _stop_workers(self.procs, self.conns, [self.pending[i].target for i in self.busy.values()])


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
