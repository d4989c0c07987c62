"""``vdsr serve``: a local web app (FastAPI + uvicorn) over the same path as ``vdsr upscale``.

Why FastAPI rather than Gradio: the page needs a custom before/after slider with pixel zoom and a
plain JSON/PNG API that scripts can call; FastAPI gives both with a single static page and no
front-end build, and it is small to install and to test (``TestClient`` in-process, Playwright in
a real browser).

API:
* ``GET /api/health`` -> ``{"status": "ok", "model": ..., "scales": [...], "limits": {...},
  "queue": {"running": R, "waiting": W}}``
* ``POST /api/upscale?scale=S[&method=vdsr|bicubic][&ensemble=true][&ticket=T]`` with multipart ``file`` ->
  ``image/png``; errors are JSON ``{"error": "..."}`` with 400 (bad input), 403 (another site's
  page, or a host name this server does not answer to), 408 (the upload arrived too slowly),
  413 (too large) or 503 with ``Retry-After`` (the queue is full). VDSR jobs wait in a bounded
  first-come queue (``max_jobs`` run at once); bicubic previews have a small lane of their own.
  A job whose client disconnects is dropped from the queue, or stopped between two tiles.
* ``GET /api/queue?ticket=T`` -> ``{"running": R, "waiting": W, "position": P}``: P is 0 while
  ticket T's job runs, n while it is n-th in line, ``null`` otherwise.

Uploads are read and decoded in memory (:mod:`vdsr.serve.uploads`); nothing is written to disk.
"""

from __future__ import annotations

import asyncio
import errno
import math
import socket
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from numpy.typing import NDArray
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive

from vdsr.api import bicubic_clipped, upscale_image
from vdsr.backends import resolve_device
from vdsr.constants import (
    DEFAULT_TILE,
    MAX_SCALE,
    SERVER_MAX_OUTPUT_PIXELS,
    SERVER_MAX_PIXELS,
    SERVER_MAX_QUEUE,
    SERVER_MAX_UPLOAD_MB,
    SERVER_PREVIEW_JOBS,
    __version__,
)
from vdsr.engine import Upscaler
from vdsr.errors import (
    AddressUnavailable,
    BadScale,
    Cancelled,
    TooLarge,
    VDSRError,
)
from vdsr.io.encode import encode_png
from vdsr.io.images import LoadedImage, decode_image, probe_image
from vdsr.io.outputs import output_name
from vdsr.pixels import to_uint, to_unit
from vdsr.serve.access import Access, Guard
from vdsr.serve.uploads import BodyLimits, ClientGone, RequestRefused, display_name, read_upload
from vdsr.sizes import check_output_pixels, check_scale
from vdsr.weights import WeightsMetadata, load_model

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


class ErrorBody(BaseModel):
    """Every error response: one line naming the file and the problem."""

    error: str


API_DESCRIPTION = (
    "Upscale images with VDSR. `POST /api/upscale` returns the PNG; errors are JSON "
    "`{\"error\": \"...\"}`. VDSR jobs wait in a first-come queue (`GET /api/queue`); "
    "bicubic previews do not."
)
UPSCALE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The upscaled image as PNG (the upload's EXIF, ICC profile and DPI kept).",
          "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
    400: {"model": ErrorBody, "description": "Not an image, a corrupt image, a bad scale, method, "
                                             "ticket or form."},
    403: {"model": ErrorBody, "description": "Sent by another site's page, or for a host name this "
                                             "server does not answer to."},
    408: {"model": ErrorBody, "description": "The upload arrived too slowly."},
    413: {"model": ErrorBody, "description": "The upload, the image or the result is over a limit "
                                             "(see `GET /api/health`)."},
    503: {"model": ErrorBody, "description": "The queue is full, or the server is stopping; try "
                                             "again after `Retry-After` seconds.",
          "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}},
}
UPSCALE_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "the image"}}}}}}}


def _openapi_without_422(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema minus its generic 422 responses: this API answers bad requests with 400."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def error(status: int, message: str, headers: dict[str, str] | None = None,
          close: bool = False) -> JSONResponse:
    """An error answer: JSON ``{"error": message}``; ``close`` ends the connection after it
    (the request's body was left unread)."""
    headers = dict(headers or {})
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def attachment(filename: str) -> str:
    """``Content-Disposition`` for a download named ``filename`` (any characters): an ASCII
    ``filename=`` for old clients and, when it differs, RFC 5987's UTF-8 ``filename*=``."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


class Service:
    """The web app's state (the model, the limits, the two job lanes) and one method per endpoint.

    Built once per server by :func:`create_app`; ``close`` stops it (jobs end at their next tile,
    their clients get 503).
    """

    def __init__(self, upscaler: Upscaler, meta: WeightsMetadata, weights_name: str,
                 limits: Limits) -> None:
        self.upscaler, self.meta, self.weights_name, self.limits = upscaler, meta, weights_name, limits
        # The self-ensemble shares the backend (one session, one copy of the weights).
        self.ensemble = Upscaler(upscaler.model, tile=upscaler.tile, ensemble=True,
                                 backend_instance=upscaler.runner)
        self.queue = JobQueue(limits.max_jobs, limits.max_queue)
        # Bicubic previews have a lane of their own: never behind VDSR jobs, yet bounded in memory.
        self.previews = JobQueue(SERVER_PREVIEW_JOBS, limits.max_queue)
        self.page = (resources.files("vdsr.serve") / "static" / "index.html").read_text(encoding="utf-8")
        self.closing = False
        self._jobs: set[_Job] = set()

    def close(self) -> None:
        """Refuse new jobs and end the current ones (at their next tile). Call on the app's loop."""
        self.closing = True
        for job in list(self._jobs):
            job.end()

    # -- endpoints ---------------------------------------------------------------------------------
    def index(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    def health(self) -> dict[str, Any]:
        running, waiting = self.queue.counts()
        limits = self.limits
        return {"status": "ok", "model": self.meta.source, "weights": self.weights_name,
                "scales": self.meta.scales, "run": self.upscaler.info.to_dict(),
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                           "max_output_pixels": limits.max_output_pixels,
                           "max_jobs": limits.max_jobs, "max_queue": limits.max_queue},
                "queue": {"running": running, "waiting": waiting}}

    def queue_state(self, ticket: Annotated[str | None, Query(max_length=64)] = None) -> dict[str, Any]:
        running, waiting = self.queue.counts()
        return {"running": running, "waiting": waiting,
                "position": None if ticket is None else self.queue.position(ticket)}

    async def upscale(
        self, request: Request, scale: Annotated[float, Query()],
        method: Annotated[str, Query()] = "vdsr",
        ensemble: Annotated[bool, Query(description="average the 8 flips/rotations (8x the time)")] = False,
        ticket: Annotated[str | None, Query(max_length=64)] = None,
    ) -> Response:
        """Upscale one image (multipart field ``file``); the answer is the PNG."""
        try:
            return await self._upscale(request, scale, method, ensemble, ticket)
        except RequestRefused as exc:
            return error(exc.status, exc.message, close=exc.unread)
        except QueueFull as exc:
            wait = self.queue.retry_after() if method == "vdsr" else self.previews.retry_after()
            return error(503, f"server busy: {exc.waiting} images are waiting; try again in {wait} s",
                         headers={"Retry-After": str(wait)})
        except (Cancelled, ClientGone):
            return self._ended()
        except asyncio.CancelledError:  # the server's loop is being torn down (a second Ctrl-C)
            if not self.closing:
                raise
            return self._ended()
        except BadScale:
            return error(400, _scale_message(request.query_params.get("scale", str(scale))))
        except TooLarge as exc:
            return error(413, str(exc))
        except VDSRError as exc:
            return error(400, str(exc))

    def _ended(self) -> Response:
        """The answer to a job that was ended: nobody reads it unless the server is stopping."""
        if self.closing:
            return error(503, "the server is shutting down", headers={"Retry-After": "5"}, close=True)
        return Response(status_code=499)  # nginx's "client closed request", for the log

    # -- the steps of an upscale ---------------------------------------------------------------------
    async def _upscale(self, request: Request, scale: float, method: str, use_ensemble: bool,
                       ticket: str | None) -> Response:
        if self.closing:
            raise Cancelled(0, 1)
        if method not in ("vdsr", "bicubic"):
            raise RequestRefused(400, f"method must be vdsr or bicubic, got {method!r}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # out-of-range scale: still served
            check_scale(scale, self.meta.scales)
        upload = await read_upload(request.receive, request.headers, "file", self.limits.body())
        name = display_name(upload.filename)
        # The cheap checks, before the job waits for its turn.
        height, width = probe_image(upload.data, name, max_pixels=self.limits.max_pixels)
        check_output_pixels(name, height, width, scale, self.limits.max_output_pixels)
        if method == "vdsr":
            lane, ticket = self.queue, ticket or uuid.uuid4().hex
        else:
            lane, ticket = self.previews, uuid.uuid4().hex
        with self._job(request) as job:
            try:
                await job.unless_ended(lane.acquire(ticket))
            except ValueError as exc:
                raise RequestRefused(400, str(exc)) from None
            started = time.monotonic()
            try:
                png = await run_in_threadpool(self._work, job, upload.data, name, scale, method,
                                              use_ensemble)
            finally:
                lane.record(time.monotonic() - started)
                lane.release(ticket)
        headers = {"Content-Disposition": attachment(output_name(Path(name).stem, scale))}  # as vdsr upscale names it
        if method == "vdsr":  # how it was made: recipe, runtime, device (and the recipe's check)
            headers["X-VDSR-Run"] = (self.ensemble if use_ensemble else self.upscaler).info.describe()
        return Response(png, media_type="image/png", headers=headers)

    @contextmanager
    def _job(self, request: Request) -> Iterator[_Job]:
        """A job that ends when the client disconnects (or on :meth:`close`)."""
        job = _Job()
        self._jobs.add(job)
        watcher = asyncio.ensure_future(_until_disconnected(request.receive, job))
        try:
            yield job
        finally:
            job.end()  # if this request was cancelled, its worker thread stops at the next tile
            watcher.cancel()
            self._jobs.discard(job)

    def _work(self, job: _Job, data: bytes, name: str, scale: float, method: str,
              use_ensemble: bool) -> bytes:
        """Decode, upscale and encode one image: runs in a worker thread."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # out-of-range scale / animated image: still served
            image = decode_image(data, name, max_pixels=self.limits.max_pixels)
        if method == "bicubic":
            pixels, alpha = _bicubic_preview(image, scale, job.progress)
            return encode_png(pixels, alpha, image.bit_depth, image.metadata)
        up = self.ensemble if use_ensemble else self.upscaler
        png = upscale_image(up, image, scale, progress=job.progress)
        assert png is not None
        return png


async def _until_disconnected(receive: Receive, job: _Job) -> None:
    """Wait for the ASGI ``http.disconnect`` (the body has been read) and end ``job``."""
    while (await receive())["type"] != "http.disconnect":
        pass
    job.end()


def _scale_message(given: str) -> str:
    """The message for a refused scale, with the number as the client wrote it."""
    try:
        value = float(given)
    except ValueError:
        return f"scale must be a number, got {given!r}"
    if math.isfinite(value) and value > MAX_SCALE:
        return f"scale {given} is too large (at most {MAX_SCALE:g})"
    return f"scale must be a finite number greater than 1, got {given}"


def _bicubic_preview(image: LoadedImage, scale: float, progress: Callable[[int, int], None]
                     ) -> tuple[NDArray[Any], NDArray[np.uint8] | None]:
    """The bicubic preview as the integers :func:`encode_png` writes, one plane at a time.

    A plane is upscaled in float64 and quantised at once, so the preview holds at most two
    float64 output planes (not the whole float64 RGB result and its copies): the memory of a job.
    """
    raw = image.raw
    grey16 = raw.ndim == 2 and image.bit_depth == 16 and not image.has_alpha
    bits = 16 if grey16 else 8  # what encode_png keeps
    planes = [raw] if raw.ndim == 2 else [raw[..., c] for c in range(raw.shape[2])]
    total = len(planes) + image.has_alpha
    out: NDArray[Any] | None = None
    for c, plane in enumerate(planes):
        result = to_uint(bicubic_clipped(to_unit(plane), scale), bits, overwrite=True)
        if out is None:
            out = np.empty(result.shape + ((len(planes),) if raw.ndim == 3 else ()), result.dtype)
        if raw.ndim == 3:
            out[..., c] = result
        else:
            out[...] = result
        progress(c + 1, total)
    alpha = None
    if image.raw_alpha is not None:
        alpha = to_uint(bicubic_clipped(to_unit(image.raw_alpha), scale), 8, overwrite=True)
        progress(total, total)
    assert out is not None
    return out, alpha


def create_app(weights: str | Path | None = None, limits: Limits | None = None,
               device: str = "auto", precision: str = "auto", backend: str = "auto",
               access: Access | None = None) -> FastAPI:
    """Build the FastAPI application (the model is loaded and its backend built once, here).

    ``app.state.service`` is its :class:`Service`. Raises :class:`DeviceUnavailable` for a
    device that is not here, :class:`vdsr.errors.WeightsError` for bad weights.
    """
    limits = limits or Limits()
    access = access or Access()
    dev = resolve_device(device)
    model, meta = load_model(weights)
    upscaler = Upscaler(model, device=dev, precision=precision, backend=backend, tile=DEFAULT_TILE)
    weights_name = "the shipped VDSR model" if weights is None else Path(weights).name  # for people
    service = Service(upscaler, meta, weights_name, limits)
    # The API docs page loads Swagger UI from files installed with fastapi-offline, not from a
    # CDN, so it works on machines without internet access.
    app: FastAPI = FastAPIOffline(title="vdsr", version=__version__, docs_url="/api/docs", redoc_url=None,
                                  static_url="/api/docs-assets", description=API_DESCRIPTION)
    app.openapi = lambda: _openapi_without_422(app)  # type: ignore[method-assign]
    app.state.service = service
    app.add_api_route("/", service.index, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/api/health", service.health, methods=["GET"])
    app.add_api_route("/api/queue", service.queue_state, methods=["GET"])
    app.add_api_route("/api/upscale", service.upscale, methods=["POST"], response_class=Response,
                      responses=UPSCALE_RESPONSES, summary="Upscale one image", openapi_extra=UPSCALE_BODY)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)
    if access.origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(access.origins),
                           allow_methods=["GET", "POST"], expose_headers=["Retry-After", "Content-Disposition", "X-VDSR-Run"])
    app.add_middleware(Guard, access=access)
    return app


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(x) for x in first.get("loc", []) if x not in ("query", "body"))
    return error(400, f"{where or 'request'}: {first.get('msg', 'invalid request')}")


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
    # A bug: the traceback goes to the server's log, the client gets JSON like every error.
    return error(500, f"internal error ({type(exc).__name__}); see the server's log")


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port``; raises :class:`AddressUnavailable` if it cannot be.

    Bound here rather than by uvicorn, which logs a multi-line error and exits the process
    itself (code 3) when the port is taken.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise AddressUnavailable(host, port, f"unknown host ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise AddressUnavailable(host, port, reason) from None
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: FastAPI, host: str, port: int, limits: Limits, **options: Any) -> Any:
    """uvicorn's configuration for ``app``, with the time limits for slow clients."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=_protocol(limits.head_seconds),
                          timeout_keep_alive=limits.keep_alive_seconds, **options)


def _protocol(head_seconds: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's line and headers.

    uvicorn closes idle connections only after an answer (keep-alive); a connection that never
    completes its headers stays open for ever. This one is closed ``head_seconds`` after it
    opened, or after its last answer, unless a request has begun.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_cycle: object = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not self._head_cycle:  # a request has begun
                self._disarm()

        def on_response_complete(self) -> None:
            finished = self.cycle
            super().on_response_complete()
            if self.cycle is finished:  # else a pipelined request has begun
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_cycle = self.cycle
            self._head_timer = self.loop.call_later(head_seconds, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.cycle is self._head_cycle and not self.transport.is_closing():
                self.transport.close()

    return TimedH11Protocol


def serve(host: str = "127.0.0.1", port: int = 8000, weights: str | None = None,
          limits: Limits | None = None, device: str = "auto", precision: str = "auto",
          on_ready: Callable[[str], None] | None = None, allow_hosts: tuple[str, ...] = (),
          allow_origins: tuple[str, ...] = ()) -> None:
    """Run the app with uvicorn until interrupted; ``on_ready(url)`` is called once it is loaded.

    Raises :class:`AddressUnavailable` before loading the model if the port cannot be used.
    On SIGINT/SIGTERM the server stops at once: jobs end at their next tile and their clients
    are told (503); waiting jobs are dropped.
    """
    import uvicorn

    limits = limits or Limits()
    access = Access(host=host, hosts=allow_hosts, origins=allow_origins)
    sock = listen_socket(host, port)
    try:
        app = create_app(weights, limits, device=device, precision=precision, access=access)
        if on_ready is not None:
            shown = f"[{host}]" if ":" in host else host
            on_ready(f"http://{shown}:{sock.getsockname()[1]}")
        service: Service = app.state.service

        class Server(uvicorn.Server):
            async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
                service.close()  # the jobs end first, so the graceful wait is short
                await super().shutdown(sockets)
                if self.force_exit:  # a second Ctrl-C: uvicorn skips the app's shutdown, whose
                    await self.lifespan.shutdown()  # task would be cancelled with a traceback

        Server(uvicorn_config(app, host, port, limits, log_level="info")).run(sockets=[sock])
    finally:
        sock.close()
