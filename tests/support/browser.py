"""Debian's Chromium, headless: a page's DOM after its scripts ran, and a screenshot of it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--virtual-time-budget=15000", "--window-size=1280,1000"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(url: str, screenshot: Path, timeout_s: float = 120) -> str:
    """The DOM of ``url`` once its scripts have run; a PNG of the page at ``screenshot``."""
    binary = chromium()
    assert binary, "chromium is not installed (scripts/setup.sh installs Debian's package)"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([binary, *FLAGS, f"--screenshot={screenshot}", url], check=True, capture_output=True,
                   timeout=timeout_s)
    dom = subprocess.run([binary, *FLAGS, "--dump-dom", url], check=True, capture_output=True, timeout=timeout_s)
    return dom.stdout.decode()


def screenshot_with_cookie(url: str, cookie: dict[str, str], screenshot: Path, *, settle_s: float = 8,
                           timeout_s: float = 120) -> str:
    """Open ``url`` in headless Chromium with ``cookie`` set first (a logged-in session), through
    the DevTools protocol; wait for the page to settle, keep a PNG and return the page's text."""
    import base64
    import json
    import tempfile
    import time
    import urllib.request

    from websockets.sync.client import connect

    binary = chromium()
    assert binary, "chromium is not installed (scripts/setup.sh installs Debian's package)"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1400,1000", "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file, deadline = Path(profile) / "DevToolsActivePort", time.monotonic() + 30
            while not port_file.is_file() or not port_file.read_text().strip():
                assert time.monotonic() < deadline, "chromium did not open its DevTools port"
                time.sleep(0.2)
            port = int(port_file.read_text().split()[0])
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            page = next(t for t in targets if t["type"] == "page")
            with connect(page["webSocketDebuggerUrl"], max_size=2**26, open_timeout=timeout_s) as ws:
                counter = iter(range(1, 10**6))

                def call(method: str, **params: object) -> dict:
                    ident = next(counter)
                    ws.send(json.dumps({"id": ident, "method": method, "params": params}))
                    while True:
                        message = json.loads(ws.recv(timeout=timeout_s))
                        if message.get("id") == ident:
                            assert "error" not in message, message
                            return message["result"]

                call("Network.enable")
                call("Network.setCookie", url=url, **cookie)
                call("Page.enable")
                call("Page.navigate", url=url)
                time.sleep(settle_s)  # a single-page app renders after its API calls return
                png = call("Page.captureScreenshot", format="png")["data"]
                screenshot.write_bytes(base64.b64decode(png))
                text = call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
                return text["result"].get("value") or ""
        finally:
            process.terminate()
            process.wait(timeout=30)
