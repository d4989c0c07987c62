"""``vdsr serve``: a local web app (FastAPI + uvicorn) over the same path as ``vdsr upscale``.

Why FastAPI rather than Gradio: the page needs a custom before/after slider with pixel zoom and a
plain JSON/PNG API that scripts can call; FastAPI gives both with a single static page and no
front-end build, and it is small to install and to test (``TestClient`` in-process, Playwright in
a real browser).

API:
* ``GET /api/health`` -> ``{"status": "ok", "model": ..., "scales": [...], "limits": {...}}``
* ``POST /api/upscale?scale=S[&method=vdsr|bicubic]`` with multipart ``file`` -> ``image/png``;
  errors are JSON ``{"error": "..."}`` with 400 (bad input), 413 (too large) or 503 (busy).

Uploads are decoded in memory and nothing is written to disk.
"""

from __future__ import annotations

import errno
import math
import socket
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from vdsr.constants import (
    SERVER_MAX_OUTPUT_PIXELS,
    SERVER_MAX_PIXELS,
    SERVER_MAX_UPLOAD_MB,
    __version__,
)
from vdsr.errors import AddressUnavailable, TooLarge, VDSRError
from vdsr.images import check_output_size, decode_image, encode_png
from vdsr.inference import DEFAULT_TILE, bicubic_clipped, check_scale, upscale_loaded
from vdsr.weights import load_model


@dataclass
class Limits:
    """Server limits, all configurable from ``vdsr serve``."""

    max_upload_bytes: int = SERVER_MAX_UPLOAD_MB * 1024 * 1024
    max_pixels: int = SERVER_MAX_PIXELS  # decoded image pixels
    max_output_pixels: int = SERVER_MAX_OUTPUT_PIXELS  # result pixels: image pixels x scale^2
    max_jobs: int = 1


def create_app(weights: str | Path | None = None, limits: Limits | None = None) -> Any:
    """Build the FastAPI application (the model is loaded once, here)."""
    limits = limits or Limits()
    model, meta = load_model(weights)
    jobs = threading.BoundedSemaphore(limits.max_jobs)
    page = (resources.files("vdsr") / "static" / "index.html").read_text(encoding="utf-8")
    app = FastAPI(title="vdsr", version=__version__, docs_url="/api/docs")
    app.state.jobs = jobs
    app.state.limits = limits

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

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
        return {"status": "ok", "model": meta.source, "scales": meta.scales,
                "limits": {"max_upload_bytes": limits.max_upload_bytes,
                           "max_pixels": limits.max_pixels,
                           "max_output_pixels": limits.max_output_pixels, "max_jobs": limits.max_jobs}}

    @app.post("/api/upscale")
    def upscale_endpoint(file: UploadFile = File(...), scale: float = Query(...),  # noqa: B008
                         method: str = Query("vdsr")) -> Response:
        if method not in ("vdsr", "bicubic"):
            return error(400, f"method must be vdsr or bicubic, got {method!r}")
        if not math.isfinite(scale):
            return error(400, "scale must be a finite number greater than 1")
        data = file.file.read(limits.max_upload_bytes + 1)
        name = Path(file.filename or "upload").name
        if len(data) > limits.max_upload_bytes:
            return error(413, f"{name}: file is larger than the limit of {limits.max_upload_bytes:,} bytes")
        if not jobs.acquire(blocking=False):
            return error(503, "server busy: another image is being upscaled, try again shortly")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # out-of-range scale / animated image: still served
                check_scale(scale, meta.scales)
                image = decode_image(data, name, max_pixels=limits.max_pixels)
            check_output_size(name, image.height, image.width, scale, limits.max_output_pixels)
            if method == "bicubic":
                pixels = bicubic_clipped(image.pixels, scale)
                alpha = None if image.alpha is None else bicubic_clipped(image.alpha, scale)
            else:
                pixels, alpha = upscale_loaded(model, image, scale, DEFAULT_TILE)
            png = encode_png(pixels, alpha, image.bit_depth)
        except TooLarge as exc:
            return error(413, str(exc))
        except VDSRError as exc:
            return error(400, str(exc))
        finally:
            jobs.release()
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
          limits: Limits | None = None, on_ready: Callable[[str], None] | None = None) -> None:
    """Run the app with uvicorn until interrupted; ``on_ready(url)`` is called once it is loaded.

    Raises :class:`AddressUnavailable` before loading the model if the port cannot be used.
    """
    import uvicorn

    sock = listen_socket(host, port)
    try:
        app = create_app(weights, limits)
        if on_ready is not None:
            shown = f"[{host}]" if ":" in host else host
            on_ready(f"http://{shown}:{sock.getsockname()[1]}")
        config = uvicorn.Config(app, host=host, port=port, log_level="info")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
