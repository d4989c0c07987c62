"""The web app's limits and its job queue: :class:`Limits` (uploads, pixels, jobs, slow clients),
:class:`JobQueue` (first come, first served; waiting costs no thread), and one job's life
(ended when its client leaves or the server stops)."""

from __future__ import annotations

import asyncio
import math
import threading
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from vdsr.constants import (
    SERVER_MAX_OUTPUT_PIXELS,
    SERVER_MAX_PIXELS,
    SERVER_MAX_QUEUE,
    SERVER_MAX_UPLOAD_MB,
)
from vdsr.errors import (
    Cancelled,
)
from vdsr.serve.uploads import BodyLimits

__all__ = ["JobQueue", "Limits", "QueueFull"]

T = TypeVar("T")


@dataclass
class Limits:
    """Server limits, all configurable from ``vdsr serve`` or here."""

    max_upload_bytes: int = SERVER_MAX_UPLOAD_MB * 1024 * 1024
    max_pixels: int = SERVER_MAX_PIXELS  # decoded image pixels
    max_output_pixels: int = SERVER_MAX_OUTPUT_PIXELS  # result pixels: image pixels x scale^2
    max_jobs: int = 1  # VDSR jobs running at once
    max_queue: int = SERVER_MAX_QUEUE  # VDSR jobs waiting for their turn; beyond this: 503
    # Slow clients: a connection holds a socket (and an upload its memory) while it lasts.
    head_seconds: float = 10.0  # a request line and headers, from connecting or the last answer
    keep_alive_seconds: int = 5  # an idle connection after an answer
    body_idle_seconds: float = 30.0  # the longest pause while an upload arrives
    body_seconds: float = 300.0  # a whole upload

    def body(self) -> BodyLimits:
        return BodyLimits(self.max_upload_bytes, self.body_idle_seconds, self.body_seconds)


class QueueFull(Exception):
    """Every place in the :class:`JobQueue` is taken; ``waiting`` jobs are ahead."""

    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        super().__init__(f"{waiting} jobs waiting")


class JobQueue:
    """First-come, first-served admission of VDSR jobs: ``workers`` run, up to ``capacity`` wait.

    Each job has a ticket (any short string) so a page can ask for its place in line while it
    waits. Waiting costs no thread: a waiter is an asyncio future, woken (on its own event loop)
    by :meth:`release` when a running job ends. State changes hold a lock, so releases from other
    threads or loops are safe.
    """

    def __init__(self, workers: int, capacity: int) -> None:
        self.workers, self.capacity = workers, capacity
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._waiting: OrderedDict[str, asyncio.Future[None]] = OrderedDict()
        self._seconds = 0.0  # mean duration of a job, for Retry-After (0: none finished yet)

    def position(self, ticket: str) -> int | None:
        """0: running; n >= 1: n-th in line; ``None``: not in the queue (finished or unknown)."""
        with self._lock:
            if ticket in self._running:
                return 0
            for place, waiting in enumerate(self._waiting, start=1):
                if waiting == ticket:
                    return place
            return None

    def counts(self) -> tuple[int, int]:
        """``(running, waiting)``."""
        with self._lock:
            return len(self._running), len(self._waiting)

    def retry_after(self) -> int:
        """Seconds after which a refused job is likely to find a free place (at least 1)."""
        running, _ = self.counts()  # a place frees when one of the running jobs ends
        return max(1, math.ceil((self._seconds or 5.0) / max(1, running)))

    def record(self, seconds: float) -> None:
        """Fold one finished job's duration into the mean used by :meth:`retry_after`."""
        self._seconds = seconds if not self._seconds else 0.8 * self._seconds + 0.2 * seconds

    async def acquire(self, ticket: str) -> None:
        """Wait for a free place; raises :class:`QueueFull`, or ``ValueError`` for a ticket in use."""
        with self._lock:
            if ticket in self._running or ticket in self._waiting:
                raise ValueError(f"ticket {ticket!r} is already in the queue")
            if len(self._running) < self.workers and not self._waiting:
                self._running.add(ticket)
                return
            if len(self._waiting) >= self.capacity:
                raise QueueFull(len(self._waiting))
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting[ticket] = turn
        try:
            await turn
        except asyncio.CancelledError:
            with self._lock:
                given = self._waiting.pop(ticket, None) is None  # else it was still waiting
            if given:
                self.release(ticket)
            raise

    def release(self, ticket: str) -> None:
        """End ``ticket``'s job and hand its place to the next in line."""
        with self._lock:
            self._running.discard(ticket)
            while self._waiting and len(self._running) < self.workers:
                following, turn = self._waiting.popitem(last=False)
                self._running.add(following)
                turn.get_loop().call_soon_threadsafe(_wake, turn)


def _wake(turn: asyncio.Future[None]) -> None:
    if not turn.done():  # a cancelled waiter releases its place itself
        turn.set_result(None)


class _Job:
    """One request's job, which can be ended from outside: its client left, the server stops."""

    def __init__(self) -> None:
        self.stop = threading.Event()  # read by the worker thread between tiles
        self.ended = asyncio.Event()  # awaited while the job waits for its turn

    def end(self) -> None:
        self.stop.set()
        self.ended.set()

    def progress(self, done: int, total: int) -> None:
        """The engine's ``progress`` callback: raising here stops the job after this tile."""
        if self.stop.is_set():
            raise Cancelled(done, total)

    async def unless_ended(self, awaitable: Awaitable[T]) -> T:
        """``awaitable``'s result, or :class:`Cancelled` if the job is ended first (then the
        awaitable is cancelled)."""
        task = asyncio.ensure_future(awaitable)
        ended = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            raise Cancelled(0, 1)
        return task.result()
