"""`vdsr serve`: the API (in-process) and an end-to-end test in headless Chromium (Playwright
driving Debian's /usr/bin/chromium; no browser download)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import ROOT, random_rgb, write_png
from vdsr.cli import main
from vdsr.server import Limits, create_app


@pytest.fixture
def client(tiny_weights: Path) -> TestClient:
    return TestClient(create_app(tiny_weights, Limits(max_upload_bytes=200_000, max_pixels=50_000)))


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
    client = TestClient(create_app(tiny_weights))
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
    client = TestClient(create_app(tiny_weights, Limits(max_output_pixels=10_000)))
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
    import vdsr.server

    gate, order = threading.Event(), []
    entry = "upscale_image"  # the server's one call into the library
    real = getattr(vdsr.server, entry)

    def slow(model, image, *args, **kwargs):  # type: ignore[no-untyped-def]
        order.append(image.path.name)
        assert gate.wait(30), "test gate never opened"
        return real(model, image, *args, **kwargs)

    monkeypatch.setattr(vdsr.server, entry, slow)
    return gate, order


def test_simultaneous_uploads_queue_instead_of_503(tiny_weights: Path) -> None:
    """Bug 2: 12 uploads at once with max_jobs=1 gave 1x200 and 11x503; now they all wait their turn."""
    from concurrent.futures import ThreadPoolExecutor

    data = png_bytes(random_rgb(24, 24))
    with TestClient(create_app(tiny_weights, Limits(max_jobs=1))) as client:
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
    with TestClient(create_app(tiny_weights, Limits(max_jobs=1, max_queue=2))) as client:
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
    from tests.test_image_files import SRGB, photo_with_metadata

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
    assert set(responses) == {"200", "400", "413", "503"}
    assert list(responses["200"]["content"]) == ["image/png"]
    assert "Retry-After" in responses["503"]["headers"]
    assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


def test_bicubic_previews_have_their_own_bounded_lane(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Previews skip the VDSR queue but do not run without bound (each may hold a large image)."""
    from concurrent.futures import ThreadPoolExecutor

    import vdsr.server
    from vdsr.constants import SERVER_PREVIEW_JOBS

    lock, running, peak = threading.Lock(), [0], [0]
    real = vdsr.server.bicubic_clipped

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(vdsr.server, "bicubic_clipped", counted)
    data = png_bytes(random_rgb(8, 8))
    with TestClient(create_app(tiny_weights)) as client:
        def post(i: int) -> int:
            return client.post("/api/upscale?scale=2&method=bicubic", files={"file": (f"{i}.png", data)}).status_code

        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(post, range(6))) == [200] * 6
    assert peak[0] == SERVER_PREVIEW_JOBS


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed (.ci/run installs it)")
@pytest.mark.slow
@pytest.mark.browser
def test_browser_shows_queue_places_and_retries_a_full_queue(tiny_weights: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 2 in the page: each card shows its place in line, and a '503 queue full' is retried
    after Retry-After until every image is done."""
    from playwright.sync_api import sync_playwright

    import vdsr.server

    entry = "upscale_image"
    real = getattr(vdsr.server, entry)

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.8)
        return real(*args, **kwargs)

    monkeypatch.setattr(vdsr.server, entry, slow)
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
