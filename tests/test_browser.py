"""End to end in a real headless browser: start the app on a loopback port, upload a document, read the
predicted label from the page, save a screenshot. Skips, with the reason, where no Chromium is installed."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.tiny_model import make_model_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    model = make_model_dir(tmp_path / "model")
    port = _free_port()
    env = {**os.environ, "TXL_MODEL": str(model), "OMP_NUM_THREADS": "1"}
    app = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("the app did not start within 90 s")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_upload_and_read_the_prediction_in_chromium(server, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium; `bash run.sh test` does it as root)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    doc = tmp_path / "match-report.txt"
    doc.write_text("The team won the cup after the coach changed the league season plan. " * 30)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(server)
        page.locator("input[type=file]").first.set_input_files(str(doc))
        heading = page.locator("h3", has_text="match-report.txt")
        heading.wait_for(timeout=90_000)
        text = heading.inner_text()
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        browser.close()
    assert any(label in text for label in ("politics", "sport", "tech")), text
    assert (tmp_path / "app.png").stat().st_size > 10_000
