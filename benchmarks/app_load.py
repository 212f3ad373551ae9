"""The app under load, for docs/RELIABILITY.md: `--sessions` browser sessions on loopback upload a different
document each at the same moment and wait for the prediction; each must see its own document only, no error.

    python -m benchmarks.app_load [--sessions 10] [--model app/models/bbc_news] [--timeout 600]

Starts `streamlit run app/streamlit_app.py` on a free loopback port, drives headless Chromium through
Playwright (one browser, one context per session, all at once with asyncio), prints one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOPICS = ["the striker scored twice as the club won the cup final", "shares fell as the bank cut its profit forecast",
          "the minister lost the vote on the new tax bill", "the studio released a film that topped the box office",
          "the phone maker unveiled a faster chip and software update"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(model: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "TXL_MODEL": model, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "streamlit_app.py"),
                             "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the app did not start within 120 s")


async def session(browser, url: str, doc: Path, others: list[str], timeout_ms: int) -> dict:
    """Upload `doc` in a fresh context (its own Streamlit session) and read the page once it shows a result."""
    context = await browser.new_context(viewport={"width": 1280, "height": 1400})
    page = await context.new_page()
    page.set_default_timeout(timeout_ms)  # the first page also loads the model; a busy machine is slow
    started = time.time()
    try:
        await page.goto(url)
        await page.locator("input[type=file]").first.set_input_files(str(doc))
        heading = page.locator("h3", has_text=doc.name)
        await heading.wait_for(timeout=timeout_ms)
        body = await page.locator("body").inner_text()
        errors = await page.locator("[data-testid=stException], [data-testid=stAlertContentError]").count()
        leaked = [name for name in others if name in body]
        return {"doc": doc.name, "seconds": round(time.time() - started, 1), "heading": await heading.inner_text(),
                "errors": errors, "leaked": leaked}
    except Exception as e:  # noqa: BLE001 - a session that fails is a figure, not a crash of the benchmark
        return {"doc": doc.name, "seconds": round(time.time() - started, 1), "failure": f"{type(e).__name__}: {e}"[:200]}
    finally:
        await context.close()


async def drive(url: str, docs: list[Path], timeout_ms: int) -> list[dict]:
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        names = [d.name for d in docs]
        results = await asyncio.gather(*(session(browser, url, d, [n for n in names if n != d.name], timeout_ms)
                                         for d in docs))
        await browser.close()
    return list(results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--model", default=str(REPO / "app" / "models" / "bbc_news"))
    p.add_argument("--timeout", type=float, default=600, help="seconds a session may wait for its result")
    args = p.parse_args()
    port = free_port()
    proc = start_app(args.model, port)
    try:
        with tempfile.TemporaryDirectory(prefix="txl-load-") as tmp:
            docs = []
            for i in range(args.sessions):
                doc = Path(tmp, f"session-{i:02d}-{TOPICS[i % len(TOPICS)].split()[1]}.txt")
                doc.write_text(f"Report {i}. " + (TOPICS[i % len(TOPICS)] + ". ") * (20 + 7 * i))
                docs.append(doc)
            started = time.time()
            results = asyncio.run(drive(f"http://127.0.0.1:{port}", docs, int(args.timeout * 1000)))
            wall = time.time() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ok = [r for r in results if "failure" not in r and not r["errors"] and not r["leaked"]]
    print(json.dumps({"sessions": args.sessions, "ok": len(ok), "wall_seconds": round(wall, 1),
                      "slowest_session_seconds": max(r["seconds"] for r in results), "sessions_detail": results},
                     indent=1))
    sys.exit(0 if len(ok) == args.sessions else 1)


if __name__ == "__main__":
    main()
