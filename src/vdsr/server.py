"""``vdsr serve``: a local web app (FastAPI + uvicorn) over the same path as ``vdsr upscale``.

Why FastAPI rather than Gradio: the page needs a custom before/after slider with pixel zoom and a
plain JSON/PNG API that scripts can call; FastAPI gives both with a single static page and no
front-end build, and it is small to install and to test (``TestClient`` in-process, Playwright in
a real browser).

API:
* ``GET /api/health`` -> ``{"status": "ok", "model": ..., "scales": [...], "limits": {...},
  "queue": {"running": R, "waiting": W}}``
* ``POST /api/upscale?scale=S[&method=vdsr|bicubic][&ensemble=true][&ticket=T]`` with multipart ``file`` ->
  ``image/png``; errors are JSON ``{"error": "..."}`` with 400 (bad input), 413 (too large) or
  503 with ``Retry-After`` (the queue is full). VDSR jobs wait in a bounded first-come queue
  (``max_jobs`` run at once); bicubic previews skip it.
* ``GET /api/queue?ticket=T`` -> ``{"running": R, "waiting": W, "position": P}``: P is 0 while
  ticket T's job runs, n while it is n-th in line, ``null`` otherwise.

Uploads are decoded in memory and nothing is written to disk.
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
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from vdsr.constants import (
    DEFAULT_TILE,
    SERVER_MAX_OUTPUT_PIXELS,
    SERVER_MAX_PIXELS,
    SERVER_MAX_QUEUE,
    SERVER_MAX_UPLOAD_MB,
    SERVER_PREVIEW_JOBS,
    __version__,
)
from vdsr.engine import Upscaler
from vdsr.errors import AddressUnavailable, TooLarge, VDSRError
from vdsr.images import check_output_size, decode_image, encode_png, probe_image
from vdsr.inference import bicubic_clipped, check_scale, upscale_image
from vdsr.weights import load_model


@dataclass
class Limits:
    """Server limits, all configurable from ``vdsr serve``."""

    max_upload_bytes: int = SERVER_MAX_UPLOAD_MB * 1024 * 1024
    max_pixels: int = SERVER_MAX_PIXELS  # decoded image pixels
    max_output_pixels: int = SERVER_MAX_OUTPUT_PIXELS  # result pixels: image pixels x scale^2
    max_jobs: int = 1  # VDSR jobs running at once
    max_queue: int = SERVER_MAX_QUEUE  # VDSR jobs waiting for their turn; beyond this: 503


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
    400: {"model": ErrorBody, "description": "Not an image, a corrupt image, a bad scale, method or ticket."},
    413: {"model": ErrorBody, "description": "The upload, the image or the result is over a limit "
                                             "(see `GET /api/health`)."},
    503: {"model": ErrorBody, "description": "The queue is full; try again after `Retry-After` seconds.",
          "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}},
}


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


def _wake(turn: asyncio.Future[None]) -> None:
    if not turn.done():  # a cancelled waiter releases its place itself
        turn.set_result(None)


def create_app(weights: str | Path | None = None, limits: Limits | None = None,
               device: str = "cpu", precision: str = "auto", backend: str = "auto") -> Any:
    """Build the FastAPI application (the model is loaded and its backend built once, here)."""
    limits = limits or Limits()
    model, meta = load_model(weights, device=device)
    upscaler = Upscaler(model, device=device, precision=precision, backend=backend, tile=DEFAULT_TILE)
    # The self-ensemble shares the backend (one session, one copy of the weights).
    ensemble = Upscaler(model, tile=DEFAULT_TILE, ensemble=True, backend_instance=upscaler.runner)
    queue = JobQueue(limits.max_jobs, limits.max_queue)
    # Bicubic previews have a lane of their own: never behind VDSR jobs, yet bounded in memory.
    previews = JobQueue(SERVER_PREVIEW_JOBS, limits.max_queue)
    weights_name = "the shipped VDSR model" if weights is None else Path(weights).name  # for people
    page = (resources.files("vdsr") / "static" / "index.html").read_text(encoding="utf-8")
    # The API docs page loads Swagger UI from files installed with fastapi-offline, not from a
    # CDN, so it works on machines without internet access.
    app: FastAPI = FastAPIOffline(title="vdsr", version=__version__, docs_url="/api/docs", redoc_url=None,
                                  static_url="/api/docs-assets", description=API_DESCRIPTION)
    app.openapi = lambda: _openapi_without_422(app)  # type: ignore[method-assign]
    app.state.queue = queue
    app.state.limits = limits

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", []) if x not in ("query", "body"))
        return error(400, f"{where or 'request'}: {first.get('msg', 'invalid request')}")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        running, waiting = queue.counts()
        return {"status": "ok", "model": meta.source, "weights": weights_name, "scales": meta.scales,
                "run": upscaler.info.to_dict(),
                "limits": {"max_upload_bytes": limits.max_upload_bytes,
                           "max_pixels": limits.max_pixels,
                           "max_output_pixels": limits.max_output_pixels, "max_jobs": limits.max_jobs,
                           "max_queue": limits.max_queue},
                "queue": {"running": running, "waiting": waiting}}

    @app.get("/api/queue")
    def queue_state(ticket: str | None = Query(None, max_length=64)) -> dict[str, Any]:  # noqa: B008
        running, waiting = queue.counts()
        return {"running": running, "waiting": waiting,
                "position": None if ticket is None else queue.position(ticket)}

    def work(data: bytes, name: str, scale: float, method: str, use_ensemble: bool) -> bytes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # out-of-range scale / animated image: still served
            image = decode_image(data, name, max_pixels=limits.max_pixels)
        pixels: Any
        alpha: Any
        if method == "bicubic":
            pixels = bicubic_clipped(image.pixels, scale)
            alpha = None if image.alpha is None else bicubic_clipped(image.alpha, scale)
        else:
            pixels, alpha = upscale_image(ensemble if use_ensemble else upscaler, image, scale)
        return encode_png(pixels, alpha, image.bit_depth, image.metadata)

    @app.post("/api/upscale", response_class=Response, responses=UPSCALE_RESPONSES,
              summary="Upscale one image")
    async def upscale_endpoint(file: UploadFile = File(...), scale: float = Query(...),  # noqa: B008
                               method: str = Query("vdsr"),
                               ensemble: bool = Query(False, description="average the 8 flips/rotations (8x the time)"),
                               ticket: str | None = Query(None, max_length=64)) -> Response:  # noqa: B008
        if method not in ("vdsr", "bicubic"):
            return error(400, f"method must be vdsr or bicubic, got {method!r}")
        if not math.isfinite(scale):
            return error(400, "scale must be a finite number greater than 1")
        data = await file.read(limits.max_upload_bytes + 1)
        name = Path(file.filename or "upload").name
        if len(data) > limits.max_upload_bytes:
            return error(413, f"{name}: file is larger than the limit of {limits.max_upload_bytes:,} bytes")
        try:  # the cheap checks, before the job waits for its turn
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                check_scale(scale, meta.scales)
            height, width = probe_image(data, name, max_pixels=limits.max_pixels)
            check_output_size(name, height, width, scale, limits.max_output_pixels)
        except TooLarge as exc:
            return error(413, str(exc))
        except VDSRError as exc:
            return error(400, str(exc))
        lane = queue if method == "vdsr" else previews
        ticket = (ticket or uuid.uuid4().hex) if method == "vdsr" else uuid.uuid4().hex
        try:
            await lane.acquire(ticket)
        except QueueFull as exc:
            wait = lane.retry_after()
            return error(503, f"server busy: {exc.waiting} images are waiting; try again in {wait} s",
                         headers={"Retry-After": str(wait)})
        except ValueError as exc:
            return error(400, str(exc))
        started = time.monotonic()
        try:
            png = await run_in_threadpool(work, data, name, scale, method, ensemble)
        except TooLarge as exc:
            return error(413, str(exc))
        except VDSRError as exc:
            return error(400, str(exc))
        finally:
            lane.record(time.monotonic() - started)
            lane.release(ticket)
        return Response(png, media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{Path(name).stem}_x{scale:g}.png"'})

    return app


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


def serve(host: str = "127.0.0.1", port: int = 8000, weights: str | None = None,
          limits: Limits | None = None, device: str = "cpu", precision: str = "auto",
          on_ready: Callable[[str], None] | None = None) -> None:
    """Run the app with uvicorn until interrupted; ``on_ready(url)`` is called once it is loaded.

    Raises :class:`AddressUnavailable` before loading the model if the port cannot be used.
    """
    import uvicorn

    sock = listen_socket(host, port)
    try:
        app = create_app(weights, limits, device=device, precision=precision)
        if on_ready is not None:
            shown = f"[{host}]" if ":" in host else host
            on_ready(f"http://{shown}:{sock.getsockname()[1]}")
        config = uvicorn.Config(app, host=host, port=port, log_level="info")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
