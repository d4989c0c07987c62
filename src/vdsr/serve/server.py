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
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
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
    SERVER_PREVIEW_JOBS,
    __version__,
)
from vdsr.engine import Upscaler
from vdsr.errors import (
    BadScale,
    Cancelled,
    TooLarge,
    VDSRError,
)
from vdsr.io.encode import encode_png
from vdsr.io.images import LoadedImage, decode_image, probe_image
from vdsr.io.outputs import output_name
from vdsr.pixels import to_uint, to_unit
from vdsr.quiet import catch_warnings
from vdsr.serve.access import Access, Guard
from vdsr.serve.jobs import JobQueue, Limits, QueueFull, _Job
from vdsr.serve.uploads import ClientGone, RequestRefused, display_name, read_upload
from vdsr.sizes import check_output_pixels, check_scale
from vdsr.weights import WeightsMetadata, load_model

__all__ = ["API_DESCRIPTION", "ErrorBody", "Service", "UPSCALE_BODY", "UPSCALE_RESPONSES", "attachment", "create_app", "error"]


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
        except BadScale as exc:
            return error(400, _as_written(exc, request.query_params.get("scale")))
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
        with catch_warnings():
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
        with catch_warnings():
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


def _as_written(refused: BadScale, given: str | None) -> str:
    """The refusal of a scale with the number as the client wrote it ("1e9", not 1000000000.0):
    :func:`vdsr.sizes.check_scale`'s own words for the query's text."""
    if given is not None:
        try:
            with catch_warnings():
                warnings.simplefilter("ignore")
                check_scale(given)
        except BadScale as again:
            return str(again)
    return str(refused)


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
