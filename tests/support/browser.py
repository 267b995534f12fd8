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
