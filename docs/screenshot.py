"""Regenerate docs/serve.png: `vdsr serve` with the shipped model, in headless Chromium.

    python docs/screenshot.py
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import uvicorn
from PIL import Image
from playwright.sync_api import sync_playwright

from vdsr.demo import sample_image
from vdsr.resize import imresize
from vdsr.serve.server import create_app

HERE = Path(__file__).resolve().parent


def main() -> None:
    lr = np.clip(np.round(imresize(sample_image() * 255, 1 / 3)), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "chelsea_lr.png"
        Image.fromarray(lr).save(src)
        server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=8765, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto("http://127.0.0.1:8765")
            page.select_option("#scale", "3")
            page.set_input_files("#file", str(src))
            page.wait_for_selector(".card[data-ready='1']", timeout=120_000)
            page.select_option(".card .zoom", "2")
            page.fill(".card .slider", "50")
            page.dispatch_event(".card .slider", "input")
            page.screenshot(path=str(HERE / "serve.png"))
            browser.close()
        server.should_exit = True


if __name__ == "__main__":
    main()
