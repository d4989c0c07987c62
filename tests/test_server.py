"""vdsr.serve.server, with vdsr.serve.access and vdsr.serve.uploads (the server's middleware and upload reader, tested
through the app): `vdsr serve`'s API (in-process), bad requests, other sites' pages, slow clients,
Ctrl-C, and end-to-end tests in headless Chromium (Playwright driving Debian's /usr/bin/chromium;
no browser download)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import ROOT, random_rgb, write_png
from vdsr.api import bicubic_clipped
from vdsr.cli import main
from vdsr.serve.jobs import Limits
from vdsr.serve.server import create_app

LOCAL = "http://127.0.0.1:8000"


def local_client(app: FastAPI) -> TestClient:
    """A client that addresses the server as a browser on this machine does (Host 127.0.0.1:8000):
    the server refuses other host names (TestClient's default is 'testserver')."""
    return TestClient(app, base_url=LOCAL)


@pytest.fixture
def client(tiny_weights: Path) -> TestClient:
    return local_client(create_app(tiny_weights, Limits(max_upload_bytes=200_000, max_pixels=50_000)))


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def test_health(client: TestClient) -> None:
    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["limits"]["max_pixels"] == 50_000
    assert body["weights"] == "tiny.safetensors"  # what the page shows: a file name, not a run name


def test_output_equals_cli_pixel_for_pixel(client: TestClient, tiny_weights: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    for name, array in (("rgb.png", random_rgb(30, 41)),
                        ("rgba.png", np.dstack([random_rgb(20, 22), np.full((20, 22), 99, np.uint8)]))):
        src = write_png(tmp_path / name, array)
        out = tmp_path / f"cli_{name}"
        assert main(["upscale", str(src), "-s", "3", "-o", str(out), "--weights", str(tiny_weights)]) == 0
        r = client.post("/api/upscale?scale=3", files={"file": (name, src.read_bytes(), "image/png")})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        api = np.asarray(Image.open(io.BytesIO(r.content)))
        assert np.array_equal(api, np.asarray(Image.open(out)))
    capsys.readouterr()


def test_bicubic_method_and_custom_scale(client: TestClient) -> None:
    r = client.post("/api/upscale?scale=2.5&method=bicubic", files={"file": ("a.png", png_bytes(random_rgb(10, 12)))})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (30, 25)


@pytest.mark.parametrize(("query", "payload", "status", "needle"), [
    ("scale=2", b"definitely not an image", 400, "not an image"),
    ("scale=2", b"", 400, "empty file"),
    ("scale=1", None, 400, "greater than 1"),
    ("scale=abc", None, 400, "scale"),
    ("scale=nan", None, 400, "finite"),
    ("scale=2&method=magic", None, 400, "method"),
    ("", None, 400, "scale"),
])
def test_bad_uploads_get_4xx_json(client: TestClient, query: str, payload: bytes | None, status: int,
                                  needle: str) -> None:
    data = png_bytes(random_rgb(8, 8)) if payload is None else payload
    r = client.post(f"/api/upscale?{query}", files={"file": ("x.png", data)})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_missing_file_field(client: TestClient) -> None:
    r = client.post("/api/upscale?scale=2")
    assert r.status_code == 400 and "file" in r.json()["error"]


def test_limits_are_enforced(client: TestClient) -> None:
    noisy = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)  # > 200 kB
    r = client.post("/api/upscale?scale=2", files={"file": ("big.png", png_bytes(noisy))})
    assert r.status_code == 413 and "larger than the limit" in r.json()["error"]
    r = client.post("/api/upscale?scale=2", files={"file": ("wide.png", png_bytes(np.zeros((100, 600), np.uint8)))})
    assert r.status_code == 413 and "over the limit of 50,000" in r.json()["error"]
    assert client.get("/api/health").status_code == 200  # still serving


def test_nothing_is_left_on_disk(tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    client = local_client(create_app(tiny_weights))
    for _ in range(2):
        r = client.post("/api/upscale?scale=2", files={"file": ("a.png", png_bytes(random_rgb(16, 16)))})
        assert r.status_code == 200
    assert list(scratch.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# End to end, in a real browser
# ---------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _live(app):  # type: ignore[no-untyped-def]
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def live_server(tiny_weights: Path):  # type: ignore[no-untyped-def]
    yield from _live(create_app(tiny_weights))


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed (.ci/run installs it)")
@pytest.mark.slow
@pytest.mark.browser
def test_browser_upload_compare_download(live_server: str, tmp_path: Path, tiny_weights: Path) -> None:
    from playwright.sync_api import sync_playwright

    src = write_png(tmp_path / "photo.png", random_rgb(60, 80, seed=3))
    expected = tmp_path / "expected.png"
    assert main(["upscale", str(src), "-s", "3", "-o", str(expected), "--weights", str(tiny_weights)]) == 0
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 820}, accept_downloads=True)
            page.goto(live_server, timeout=30_000)
            page.wait_for_selector("#health:has-text('model:')", timeout=30_000)
            page.select_option("#scale", "3")
            page.set_input_files("#file", str(src))
            page.wait_for_selector(".card[data-ready='1']", timeout=60_000)
            assert "done" in page.inner_text(".card .status")
            page.select_option(".card .zoom", "2")
            page.fill(".card .slider", "30")
            page.dispatch_event(".card .slider", "input")
            clip = page.eval_on_selector(".card img.after", "e => e.style.clipPath")
            assert clip.startswith("inset(0px 0px 0px 144px)") or "144px" in clip  # 240 px x 2 zoom x 30 %
            with page.expect_download() as info:
                page.click(".card a.download")
            download = tmp_path / "download.png"
            info.value.save_as(download)
            assert info.value.suggested_filename == "photo_x3.png"
            got = Image.open(download)
            assert got.size == (240, 180)
            assert np.array_equal(np.asarray(got), np.asarray(Image.open(expected)))
            # An error is shown on the page and the server keeps running.
            bad = tmp_path / "bad.png"
            bad.write_bytes(b"not an image")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector(".card .status.error", timeout=30_000)
            assert "not an image" in page.inner_text(".card .status.error")
            # Several files at once (issue 18, bug 2): with one job at a time, all are queued and
            # finish; none is turned away with 'server busy'.
            many = [write_png(tmp_path / f"m{i}.png", random_rgb(40, 50, seed=10 + i)) for i in range(5)]
            page.set_input_files("#file", [str(m) for m in many])
            page.wait_for_function("document.querySelectorAll(\".card[data-ready='1']\").length === 6",
                                   timeout=120_000)
            assert "busy" not in page.inner_text("#results")
            # Issue 23 item 16: a name outside Latin-1 made the server answer 500 (the page showed it).
            page.set_input_files("#file", str(write_png(tmp_path / "写真.png", random_rgb(20, 20, seed=9))))
            page.wait_for_function("document.querySelectorAll(\".card[data-ready='1']\").length === 7",
                                   timeout=60_000)
            assert "写真.png ×3" in page.inner_text(".card h3")
            # A file over the server's upload limit is refused by the page, before it is sent.
            huge = tmp_path / "huge.png"
            huge.write_bytes(bytes(21 * 1024 * 1024))
            page.set_input_files("#file", str(huge))
            page.wait_for_selector(".card .status.error:has-text('larger than the limit')", timeout=10_000)
            # The API docs render from local files (this browser has no internet access).
            docs = browser.new_page()
            docs.goto(f"{live_server}/api/docs", timeout=30_000)
            docs.wait_for_selector(".opblock-summary-path:has-text('/api/upscale')", timeout=30_000)
            docs.close()
            shot = Path(os.environ.get("VDSR_SCREENSHOT_DIR", tmp_path)) / "serve.png"
            page.screenshot(path=str(shot), full_page=False)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert ROOT.exists()


def test_output_pixels_are_limited(tiny_weights: Path) -> None:
    """Bug 3: a small upload at a large scale is refused (413) before any work, both methods."""
    from vdsr.constants import SERVER_MAX_OUTPUT_PIXELS

    assert Limits().max_output_pixels == SERVER_MAX_OUTPUT_PIXELS
    client = local_client(create_app(tiny_weights, Limits(max_output_pixels=10_000)))
    assert client.get("/api/health").json()["limits"]["max_output_pixels"] == 10_000
    data = png_bytes(np.zeros((30, 40), np.uint8))  # x3: 90x120 = 10,800 pixels
    for method in ("vdsr", "bicubic"):
        r = client.post(f"/api/upscale?scale=3&method={method}", files={"file": ("g.png", data)})
        assert r.status_code == 413
        assert r.json()["error"] == "g.png: output of 120x90 = 10,800 pixels is over the limit of 10,000"
    r = client.post("/api/upscale?scale=2", files={"file": ("g.png", data)})  # 80x60 fits
    assert r.status_code == 200


def _blocking_upscale(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, list[str]]:
    """Make VDSR jobs wait for the returned event; the list records which ran, in order."""
    import vdsr.serve.server

    gate, order = threading.Event(), []
    entry = "upscale_image"  # the server's one call into the library
    real = getattr(vdsr.serve.server, entry)

    def slow(model, image, *args, **kwargs):  # type: ignore[no-untyped-def]
        order.append(image.path.name)
        assert gate.wait(30), "test gate never opened"
        return real(model, image, *args, **kwargs)

    monkeypatch.setattr(vdsr.serve.server, entry, slow)
    return gate, order


def test_simultaneous_uploads_queue_instead_of_503(tiny_weights: Path) -> None:
    """Bug 2: 12 uploads at once with max_jobs=1 gave 1x200 and 11x503; now they all wait their turn."""
    from concurrent.futures import ThreadPoolExecutor

    data = png_bytes(random_rgb(24, 24))
    with local_client(create_app(tiny_weights, Limits(max_jobs=1))) as client:
        def post(i: int) -> int:
            r = client.post("/api/upscale?scale=2", files={"file": (f"{i}.png", data)})
            return r.status_code

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(post, range(12)))
        assert codes == [200] * 12
        assert client.get("/api/health").json()["queue"] == {"running": 0, "waiting": 0}


def test_queue_positions_full_queue_and_bicubic_bypass(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 2: the page can show each job's place; only a full queue gets 503 (with Retry-After);
    bicubic previews do not wait behind VDSR jobs."""
    from concurrent.futures import ThreadPoolExecutor

    gate, order = _blocking_upscale(monkeypatch)
    data = png_bytes(random_rgb(16, 16))
    with local_client(create_app(tiny_weights, Limits(max_jobs=1, max_queue=2))) as client:
        def post(ticket: str) -> int:
            r = client.post(f"/api/upscale?scale=2&ticket={ticket}", files={"file": (f"{ticket}.png", data)})
            return r.status_code

        def position(ticket: str) -> int | None:
            return client.get(f"/api/queue?ticket={ticket}").json()["position"]

        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(post, "a")]
            _wait_for(lambda: position("a") == 0)
            futures.append(pool.submit(post, "b"))
            _wait_for(lambda: position("b") == 1)
            futures.append(pool.submit(post, "c"))
            _wait_for(lambda: position("c") == 2)
            assert client.get("/api/queue").json() == {"running": 1, "waiting": 2, "position": None}
            r = client.post("/api/upscale?scale=2&ticket=d", files={"file": ("d.png", data)})
            assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
            assert "busy" in r.json()["error"]
            r = client.post("/api/upscale?scale=2&ticket=b", files={"file": ("b.png", data)})
            assert r.status_code == 400 and "already in the queue" in r.json()["error"]
            t0 = time.monotonic()
            r = client.post("/api/upscale?scale=2&method=bicubic", files={"file": ("p.png", data)})
            assert r.status_code == 200 and time.monotonic() - t0 < 10  # not behind a, b, c
            r = client.post("/api/upscale?scale=2", files={"file": ("bad.png", b"not an image")})
            assert r.status_code == 400  # refused at once, without waiting for a place
            gate.set()
            assert [f.result(timeout=60) for f in futures] == [200, 200, 200]
        assert order == ["a.png", "b.png", "c.png"]  # first come, first served
        assert position("a") is None


def _wait_for(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition not reached"
        time.sleep(0.02)


def test_download_keeps_the_photo_metadata(client: TestClient, tmp_path: Path) -> None:
    """What users ask for: the PNG from the web app keeps EXIF, ICC profile and DPI."""
    from tests.conftest import SRGB, photo_with_metadata

    data = photo_with_metadata(tmp_path / "cam.jpg").read_bytes()
    r = client.post("/api/upscale?scale=2", files={"file": ("cam.jpg", data)})
    assert r.status_code == 200
    got = Image.open(io.BytesIO(r.content))
    assert got.size == (24, 40) and got.info.get("icc_profile") == SRGB
    assert got.getexif().get(0x010F) == "TestCam" and got.info["dpi"] == pytest.approx((300, 300), abs=0.01)


def test_api_docs_work_offline_and_describe_the_real_responses(client: TestClient) -> None:
    """Rough edge: /api/docs loaded Swagger UI from a CDN (blank offline) and documented a 422
    this API never sends, but not its PNG, 400, 413 or 503."""
    import re

    page = client.get("/api/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), f"{asset}: not served by this server"
        assert client.get(asset).status_code == 200, asset
    spec = client.get("/openapi.json").json()
    assert "422" not in str(spec) and "HTTPValidationError" not in str(spec)
    responses = spec["paths"]["/api/upscale"]["post"]["responses"]
    assert set(responses) == {"200", "400", "403", "408", "413", "503"}
    assert "file" in str(spec["paths"]["/api/upscale"]["post"]["requestBody"])  # Swagger UI offers a file picker
    assert list(responses["200"]["content"]) == ["image/png"]
    assert "Retry-After" in responses["503"]["headers"]
    assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


def test_bicubic_previews_have_their_own_bounded_lane(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Previews skip the VDSR queue but do not run without bound (each may hold a large image)."""
    from concurrent.futures import ThreadPoolExecutor

    import vdsr.serve.server
    from vdsr.constants import SERVER_PREVIEW_JOBS

    lock, running, peak = threading.Lock(), [0], [0]
    real = vdsr.serve.server.bicubic_clipped

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.1)  # per plane: a preview of an RGB image calls it three times
        with lock:
            running[0] -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(vdsr.serve.server, "bicubic_clipped", counted)
    data = png_bytes(random_rgb(8, 8))
    with local_client(create_app(tiny_weights)) as client:
        def post(i: int) -> int:
            return client.post("/api/upscale?scale=2&method=bicubic", files={"file": (f"{i}.png", data)}).status_code

        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(post, range(6))) == [200] * 6
    assert peak[0] == SERVER_PREVIEW_JOBS


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed (.ci/run installs it)")
@pytest.mark.slow
@pytest.mark.browser
def test_browser_shows_queue_places_and_retries_a_full_queue(tiny_weights: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 2 in the page: each card shows its place in line, and a '503 queue full' is retried
    after Retry-After until every image is done."""
    from playwright.sync_api import sync_playwright

    import vdsr.serve.server

    entry = "upscale_image"
    real = getattr(vdsr.serve.server, entry)

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.8)
        return real(*args, **kwargs)

    monkeypatch.setattr(vdsr.serve.server, entry, slow)
    files = [str(write_png(tmp_path / f"q{i}.png", random_rgb(20, 24, seed=i))) for i in range(4)]
    server = _live(create_app(tiny_weights, Limits(max_jobs=1, max_queue=1)))
    url = next(server)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            try:
                page = browser.new_page()
                page.goto(url, timeout=30_000)
                page.wait_for_selector("#health:has-text('model:')", timeout=30_000)
                page.set_input_files("#file", files)
                page.wait_for_selector(".card .status:has-text('retrying in')", timeout=30_000)
                page.wait_for_selector(".card .status:has-text('next in the queue')", timeout=30_000)
                page.wait_for_function("document.querySelectorAll(\".card[data-ready='1']\").length === 4",
                                       timeout=120_000)
                assert page.locator(".card .status.error").count() == 0
            finally:
                browser.close()
    finally:
        next(server, None)


def test_ensemble_equals_cli_ensemble(client: TestClient, tiny_weights: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = write_png(tmp_path / "e.png", random_rgb(26, 35, seed=5))
    out, plain = tmp_path / "cli_e.png", tmp_path / "cli_plain.png"
    assert main(["upscale", str(src), "-s", "2", "-o", str(out), "--weights", str(tiny_weights),
                 "--ensemble"]) == 0
    assert main(["upscale", str(src), "-s", "2", "-o", str(plain), "--weights", str(tiny_weights)]) == 0
    assert "ensemble" in capsys.readouterr().out
    r = client.post("/api/upscale?scale=2&ensemble=true", files={"file": ("e.png", src.read_bytes())})
    assert r.status_code == 200
    api = np.asarray(Image.open(io.BytesIO(r.content)))
    assert np.array_equal(api, np.asarray(Image.open(out)))
    assert not np.array_equal(api, np.asarray(Image.open(plain)))  # the ensemble changes pixels


# ---------------------------------------------------------------------------------------------
# Issue 23, items 16-20: the web server under bad requests, other sites' pages and slow clients
# ---------------------------------------------------------------------------------------------

def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "vdsr-test-boundary") -> bytes:
    """A multipart/form-data body of ``(field, filename, data)`` parts."""
    body = b""
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"' + ("" if filename is None else f'; filename="{filename}"')
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def _post_head(port: int, length: int | None, query: str = "scale=2", boundary: str = "vdsr-test-boundary") -> bytes:
    size = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (f"POST /api/upscale?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n{size}\r\n\r\n").encode()


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response (with Content-Length) from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed before a response: {data!r}"
        data += piece
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        piece = sock.recv(65536)
        assert piece, "connection closed inside the body"
        body += piece
    return int(lines[0].split()[1]), headers, body


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture
def live_factory():  # type: ignore[no-untyped-def]
    """``start(app)`` -> the URL of ``app`` served by uvicorn in a thread, stopped at teardown."""
    servers = []

    def start(app):  # type: ignore[no-untyped-def]
        server = _live(app)
        servers.append(server)
        return next(server)

    yield start
    for server in servers:
        next(server, None)


@pytest.mark.parametrize("name", ["写真.png", "Ünïcode ✓ photo.png"])
def test_any_file_name_can_be_downloaded(client: TestClient, name: str) -> None:
    """Item 16: a name outside Latin-1 gave HTTP 500 (UnicodeEncodeError building
    Content-Disposition) after the work was done. Now: RFC 5987 filename* and an ASCII fallback."""
    from urllib.parse import unquote

    r = client.post("/api/upscale?scale=2", files={"file": (name, png_bytes(random_rgb(8, 8)))})
    assert r.status_code == 200
    disposition = r.headers["content-disposition"]
    assert disposition.isascii() and disposition.startswith('attachment; filename="')
    fallback = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert fallback.endswith("_x2.png") and fallback.isascii()
    encoded = disposition.split("filename*=UTF-8''", 1)[1]
    assert unquote(encoded) == f"{Path(name).stem}_x2.png"


def test_cross_site_requests_and_foreign_hosts_are_refused(client: TestClient) -> None:
    """Item 17: any web page the user visited could make the server work (cross-site POST), and a
    foreign Host (DNS rebinding) let such a page read the answers. Both get 403 with a JSON error;
    the server's own page and clients that are not browsers are served."""
    def post(headers: dict[str, str]) -> Any:
        return client.post("/api/upscale?scale=2", files={"file": ("a.png", png_bytes(random_rgb(8, 8)))},
                           headers=headers)

    for headers in ({"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
                    {"Origin": "http://evil.example"},
                    {"Sec-Fetch-Site": "cross-site"},  # a browser that left Origin out
                    {"Origin": "http://127.0.0.1:3000", "Sec-Fetch-Site": "same-site"},  # another local app
                    {"Origin": "null"}):
        r = post(headers)
        assert r.status_code == 403, headers
        assert set(r.json()) == {"error"} and "refused" in r.json()["error"]
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
        for path in ("/", "/api/health", "/api/queue"):
            r = client.get(path, headers={"Host": host})
            assert r.status_code == 403 and "not one this server answers to" in r.json()["error"], (host, path)
    assert post({"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"}).status_code == 200  # its own page
    assert post({}).status_code == 200  # curl, scripts
    for host in ("localhost:8000", "LOCALHOST.", "[::1]:8000", "127.0.0.1"):
        assert client.get("/api/health", headers={"Host": host}).status_code == 200, host


def test_named_origins_and_hosts_can_be_allowed(tiny_weights: Path) -> None:
    """Item 17: behind a name, or for another site's page the user trusts: the allowed names and
    origins are served (with CORS headers for the origin), nothing else is."""
    from vdsr.errors import InvalidArgument
    from vdsr.serve.access import Access

    access = Access(host="0.0.0.0", hosts=("Photos.Example",), origins=("https://app.example/",))
    client = TestClient(create_app(tiny_weights, access=access), base_url="http://photos.example:8000")
    assert client.get("/api/health").status_code == 200
    assert client.get("/api/health", headers={"Host": "192.168.1.5:8000"}).status_code == 200  # bound to all
    assert client.get("/api/health", headers={"Host": "other.example"}).status_code == 403
    data = png_bytes(random_rgb(8, 8))
    r = client.post("/api/upscale?scale=2", files={"file": ("a.png", data)},
                    headers={"Origin": "https://app.example", "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    r = client.post("/api/upscale?scale=2", files={"file": ("a.png", data)},
                    headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    bound = TestClient(create_app(tiny_weights, access=Access(host="127.0.0.1")), base_url="http://photos.example")
    assert bound.get("/api/health").status_code == 403  # names need allowing
    with pytest.raises(InvalidArgument, match="scheme://host"):
        Access(origins=("app.example",))


def test_serve_flags_allow_origins_and_check_them_first(capsys: pytest.CaptureFixture[str]) -> None:
    """Item 17: ``vdsr serve --allow-origin``; a malformed one is one line before anything starts."""
    assert main(["serve", "--allow-origin", "app.example", "--port", "1"]) == 1
    assert "origin 'app.example' is not scheme://host[:port]" in capsys.readouterr().err


@pytest.mark.subprocess
def test_serve_on_a_port_in_use_is_one_line_and_exit_1(tiny_weights: Path) -> None:
    """Bug 6: uvicorn printed a multi-line log and exited 3; the README promises one line, exit 1."""
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "vdsr", "serve", "--port", str(port),
                               "--weights", str(tiny_weights)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (f"vdsr: error: cannot listen on 127.0.0.1:{port}: address already in use "
                                   "(choose another with --port or --host)")


def test_uploads_are_never_spooled_to_disk(tiny_weights: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 18: uploads over 1 MB were spooled to a temporary file (the README says they are
    decoded in memory). With no usable temporary folder at all, a 1.5 MB upload still works."""
    import tempfile

    not_a_folder = tmp_path / "file"
    not_a_folder.write_bytes(b"")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))
    noisy = np.random.default_rng(1).integers(0, 255, (700, 700, 3), dtype=np.uint8)
    data = png_bytes(noisy)
    assert len(data) > 1_400_000
    client = local_client(create_app(tiny_weights, Limits(max_upload_bytes=4_000_000)))
    r = client.post("/api/upscale?scale=1.5&method=bicubic", files={"file": ("big.png", data)})
    assert r.status_code == 200, r.text


def test_oversized_upload_is_refused_on_its_content_length(tiny_weights: Path, live_factory) -> None:  # type: ignore[no-untyped-def]
    """Item 18: 400 MB sent with a 2 MB limit were read completely before the 413. Now the 413
    comes after the headers, before a byte of the body is sent, and the connection is closed."""
    port = _port(live_factory(create_app(tiny_weights, Limits(max_upload_bytes=2 * 1024 * 1024))))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_post_head(port, 400_000_000))
        status, headers, body = _response(sock)
        assert status == 413 and headers["connection"] == "close"
        assert "larger than the limit of 2,097,152 bytes" in json.loads(body)["error"]
        assert sock.recv(1) == b""  # closed: the server will not read the 400 MB


def test_chunked_upload_stops_being_read_past_the_limit(tiny_weights: Path, live_factory) -> None:  # type: ignore[no-untyped-def]
    """Item 18, with a real streaming client: a chunked body (no Content-Length) is read only up to
    the limit; then the server answers 413 and closes, and the client cannot send the rest."""
    import select

    port = _port(live_factory(create_app(tiny_weights, Limits(max_upload_bytes=1024 * 1024))))
    chunk = 64 * 1024
    piece = f"{chunk:x}\r\n".encode() + bytes(chunk) + b"\r\n"
    sent, answer = 0, None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_post_head(port, None))
        part = b'--vdsr-test-boundary\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")  # then the file's bytes, for ever
        try:
            while sent < 200 * 1024 * 1024:
                if select.select([sock], [], [], 0)[0]:  # the server has answered
                    answer = _response(sock)
                    break
                sock.sendall(piece)
                sent += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server while we were still sending
    assert sent < 32 * 1024 * 1024, f"the server read {sent:,} bytes of a body over a 1 MiB limit"
    if answer is not None:
        status, headers, body = answer
        assert status == 413 and "larger than the limit" in json.loads(body)["error"]


def _slow_tiles(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[int]:
    """Every backend built from now on sleeps ``seconds`` per network call (one call per tile);
    the returned list counts the calls."""
    import vdsr.recipes

    calls: list[int] = []
    real = vdsr.recipes.create_backend

    class Slow:
        def __init__(self, runner: Any) -> None:
            self.runner = runner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.runner, name)

        def __call__(self, x: Any) -> Any:
            time.sleep(seconds)
            calls.append(1)
            return self.runner(x)

    monkeypatch.setattr(vdsr.recipes, "create_backend", lambda *a, **k: Slow(real(*a, **k)))
    return calls


def test_jobs_of_departed_clients_are_dropped_or_stopped(tiny_weights: Path, live_factory,  # type: ignore[no-untyped-def]
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 19: three uploads whose clients were killed kept the queue busy for 6 minutes. Now a
    waiting job leaves the queue when its client disconnects, and a running one stops at its next
    tile (the engine's progress callback raises)."""
    import httpx

    calls = _slow_tiles(monkeypatch, 0.25)
    url = live_factory(create_app(tiny_weights, Limits(max_jobs=1)))
    port = _port(url)
    body = _multipart([("file", "big.png", png_bytes(random_rgb(400, 400)))])  # x2: several tiles (DEFAULT_TILE)
    clients = []
    for ticket in ("a", "b"):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(_post_head(port, len(body), f"scale=2&ticket={ticket}") + body)
        clients.append(sock)
        _wait_for(lambda t=ticket: httpx.get(f"{url}/api/queue?ticket={t}").json()["position"] is not None)
    _wait_for(lambda: len(calls) >= 1)  # a is running, b waits
    assert httpx.get(f"{url}/api/queue?ticket=b").json()["position"] == 1
    for sock in clients:
        sock.close()  # the clients go away (as when curl is killed)
    _wait_for(lambda: httpx.get(f"{url}/api/queue").json() == {"running": 0, "waiting": 0, "position": None},
              timeout=2.0)
    stopped = len(calls)
    time.sleep(1.0)
    assert len(calls) == stopped < 9, f"{len(calls)} tiles ran; a's job has 9, b's never started"
    ok = httpx.post(f"{url}/api/upscale?scale=2", files={"file": ("s.png", png_bytes(random_rgb(16, 16)))})
    assert ok.status_code == 200  # the server goes on


def test_every_error_is_a_json_error(client: TestClient) -> None:
    """Item 20: a request without a multipart boundary answered {"detail": ...}; every error is
    now {"error": ...}, FastAPI's and Starlette's own included."""
    url = "/api/upscale?scale=2"
    cases = [
        (client.post(url, content=b"x", headers={"Content-Type": "multipart/form-data"}), 400, "boundary"),
        (client.post(url, json={"file": "a.png"}), 400, "multipart/form-data"),
        (client.post(url, content=b"garbage", headers={"Content-Type": "multipart/form-data; boundary=zz"}),
         400, "malformed"),
        (client.post(url, files={"other": ("a.png", png_bytes(random_rgb(8, 8)))}), 400, "'file'"),
        (client.get("/no/such/page"), 404, "Not Found"),
        (client.get(url), 405, "Method Not Allowed"),
        (client.get("/api/queue?ticket=" + "x" * 100), 400, "ticket"),
        (client.post("/api/upscale?scale=2&ensemble=maybe", files={"file": ("a.png", b"x")}), 400, "ensemble"),
    ]
    for r, status, needle in cases:
        assert r.status_code == status, (r.request.url, r.text)
        assert set(r.json()) == {"error"} and needle in r.json()["error"], r.text


def test_two_file_fields_are_refused(client: TestClient) -> None:
    """Item 20: two ``file`` fields silently used the last one."""
    data = png_bytes(random_rgb(8, 8))
    r = client.post("/api/upscale?scale=2", files=[("file", ("a.png", data)), ("file", ("b.png", data))])
    assert r.status_code == 400 and "more than one 'file' field" in r.json()["error"]


def test_a_refused_scale_is_shown_as_given(client: TestClient) -> None:
    """Item 20: ``scale=16.0000001`` said "scale 16 is too large"."""
    data = png_bytes(random_rgb(8, 8))
    r = client.post("/api/upscale?scale=16.0000001", files={"file": ("a.png", data)})
    assert r.status_code == 400 and r.json()["error"] == "scale 16.0000001 is too large (at most 16)"
    r = client.post("/api/upscale?scale=1.0000001e0", files={"file": ("a.png", data)})
    assert r.status_code == 200
    r = client.post("/api/upscale?scale=0.99999999", files={"file": ("a.png", data)})
    assert r.status_code == 400 and "got 0.99999999" in r.json()["error"]


def test_slow_clients_are_cut_off(tiny_weights: Path) -> None:
    """Item 20: a connection that never finished its headers, or an upload that trickled, stayed
    open for ever (uvicorn has no such timeout). Now: the request head has ``head_seconds``, an
    upload ``body_idle_seconds`` between pieces and ``body_seconds`` in all (408), and an idle
    connection ``keep_alive_seconds`` after an answer."""
    import uvicorn

    from vdsr.serve.listen import uvicorn_config

    limits = Limits(head_seconds=0.6, keep_alive_seconds=1, body_idle_seconds=0.6, body_seconds=2.0)
    app = create_app(tiny_weights, limits)
    port = _free_port()
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, limits, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_for(lambda: server.started)
    try:
        def closed_within(sock: socket.socket, seconds: float) -> bool:
            sock.settimeout(seconds)
            try:
                while sock.recv(65536):
                    pass
            except TimeoutError:
                return False
            return True

        def connect() -> socket.socket:
            return socket.create_connection(("127.0.0.1", port), timeout=10)

        with connect() as idle, connect() as partial, connect() as trickle, connect() as kept:
            partial.sendall(b"POST /api/upscale?scale=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            trickle.sendall(_post_head(port, 10_000) + b"--vdsr-test-boundary\r\n")
            kept.sendall(f"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            assert _response(kept)[0] == 200
            t0 = time.monotonic()
            assert closed_within(idle, 3) and closed_within(partial, 3)
            status, headers, body = _response(trickle)
            assert status == 408 and "too slowly" in json.loads(body)["error"]
            assert closed_within(trickle, 3) and closed_within(kept, 3)
            assert time.monotonic() - t0 < 4
        with connect() as dripping:
            dripping.sendall(_post_head(port, 10_000) + _multipart([("file", "d.png", b"")])[:-26])
            t0 = time.monotonic()
            while time.monotonic() - t0 < 5:  # a byte every 0.2 s: never idle, never done
                try:
                    dripping.sendall(b"x")
                except OSError:
                    break
                if select_readable(dripping):
                    break
                time.sleep(0.2)
            assert _response(dripping)[0] == 408 and time.monotonic() - t0 < 3.5
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def select_readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def test_a_preview_is_bounded_in_memory_like_a_job(tiny_weights: Path) -> None:
    """Item 20: a 4000² bicubic preview took the server to 5 GB (the float64 RGB result, stacked,
    clipped and rounded in whole-image copies). Now one plane at a time, equal pixels."""
    import tracemalloc

    from vdsr.pixels import to_uint

    h, w, scale = 300, 400, 3
    array = random_rgb(h, w, seed=4)
    client = local_client(create_app(tiny_weights))
    plane = (h * scale) * (w * scale) * 8  # one float64 output plane
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        r = client.post(f"/api/upscale?scale={scale}&method=bicubic", files={"file": ("p.png", png_bytes(array))})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status_code == 200
    assert peak < 3.5 * plane, f"peak {peak / plane:.1f} output planes"
    expected = to_uint(bicubic_clipped(array / 255.0, scale), 8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected)


def test_devices_are_resolved_and_checked(tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23 item 5, the server's part: ``auto`` picks CUDA when present; a device that is not
    here is one clear error before anything is loaded, not a traceback."""
    import torch

    from vdsr.errors import DeviceUnavailable

    auto = local_client(create_app(tiny_weights, device="auto")).get("/api/health").json()
    assert auto["run"]["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
    missing = ["foo", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:1"])
    for device in missing:
        with pytest.raises(DeviceUnavailable):
            create_app(tiny_weights, device=device)
        assert main(["serve", "--device", device, "--port", str(_free_port()),
                     "--weights", str(tiny_weights)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"vdsr: error: device '{device}' cannot be used: ") and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_stops_the_jobs_and_shuts_down_cleanly(tmp_path: Path, signals: int) -> None:
    """Item 20: a second SIGINT gave 500s and CancelledError tracebacks in the log. Now the first
    ends the jobs (the running one at its next tile, waiting ones at once; their clients get 503)
    and a second changes nothing: no traceback, no 500, exit code 130."""
    import signal
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vdsr", "serve", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        assert proc.stdout is not None
        assert "serving on" in proc.stdout.readline()
        _wait_for(lambda: _reachable(url), timeout=60)
        data = png_bytes(random_rgb(500, 500))  # the shipped model at x2: 9 tiles, a few seconds each

        def post(ticket: str) -> int | str:
            """The answer's status if it is the JSON 'shutting down' error, else what came."""
            try:
                r = httpx.post(f"{url}/api/upscale?scale=2&ticket={ticket}", files={"file": ("p.png", data)},
                               timeout=120)
            except httpx.HTTPError as exc:
                return type(exc).__name__
            stopping = r.headers["content-type"] == "application/json" and "shutting down" in r.text
            return r.status_code if stopping else f"{r.status_code} {r.headers['content-type']}"

        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(post, "a")
            _wait_for(lambda: httpx.get(f"{url}/api/queue?ticket=a").json()["position"] == 0)
            waiting = pool.submit(post, "b")
            _wait_for(lambda: httpx.get(f"{url}/api/queue?ticket=b").json()["position"] == 1)
            t0 = time.monotonic()
            for _ in range(signals):
                proc.send_signal(signal.SIGINT)
                time.sleep(0.3)
            code = proc.wait(timeout=60)
            seconds = time.monotonic() - t0
            answers = [running.result(timeout=60), waiting.result(timeout=60)]
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = out + err
    assert code == 130, log
    for bad in ("Traceback", "CancelledError", "Exception in ASGI application", " 500"):
        assert bad not in log, log
    assert all(a in (503, "RemoteProtocolError", "ReadError") for a in answers), (answers, log)
    assert answers[1] == 503  # the waiting job is told at once
    assert seconds < 30, f"{seconds:.0f} s to stop"


@pytest.mark.slow
@pytest.mark.subprocess
def test_ctrl_c_while_the_program_ends_changes_nothing() -> None:
    """CI caught it: a second Ctrl-C that came after "interrupted" was said, while Python was
    exiting, killed it (exit status -2, not 130). Now Ctrl-C is ignored once the command ends."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "vdsr", "serve", "--port", str(_free_port()), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert "serving on" in proc.stdout.readline()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        said = []
        for line in proc.stderr:
            said.append(line)
            if line.startswith("vdsr: error: interrupted"):
                proc.send_signal(signal.SIGINT)  # at once: the process is on its way out
                break
        code = proc.wait(timeout=60)
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130, "".join(said) + rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest


def _reachable(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
