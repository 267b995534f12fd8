"""Example requests against a running service, printed for people: what the main job ends with."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXAMPLE_QUERIES = ("navy blue shirt for men", "red dres under $40", "black leather wallet")


def wait_ready(base: str, timeout_s: float = 300, alive: Callable[[], bool] = lambda: True) -> float:
    """Seconds until ``base``/readyz answers 200; TimeoutError past ``timeout_s``."""
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if not alive():
            raise RuntimeError("the service stopped while starting; run `skulens serve` to see why")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise TimeoutError(f"the service at {base} was not ready after {timeout_s:.0f} s")


def wait_llm(base: str, admin_key: str, timeout_s: float = 120, workers: int = 1) -> bool:
    """Wait (up to ``timeout_s``) until every LLM tier has loaded in ``workers`` worker processes, so
    the examples (or a benchmark) do not share the CPU with the local model's loading; False when
    some tier is still loading. Each status call reaches one worker: they are told apart by pid."""
    import httpx

    started = time.perf_counter()
    ready: set[int] = set()
    while time.perf_counter() - started < timeout_s:
        status = httpx.get(f"{base}/admin/status", headers={"X-API-Key": admin_key}, timeout=10)
        if status.status_code != 200:
            return False
        body = status.json()
        llm = body.get("llm") or {}
        if all((llm.get("ready") or {}).values()):
            ready.add(body.get("worker_pid", 0))
            if len(ready) >= workers:
                return True
            time.sleep(0.2)
            continue
        time.sleep(2)
    return False


def run_examples(base: str, photo: Path | None, show: Callable[[str, dict[str, Any]], None]) -> None:
    """Text searches, a photo search, similar products and a session recommendation."""
    import httpx

    with httpx.Client(base_url=base, timeout=60) as client:
        for text in EXAMPLE_QUERIES:
            show(f"search {text!r}", _ok(client.post("/search", json={"text": text, "k": 5})))
        if photo is not None:
            encoded = base64.b64encode(photo.read_bytes()).decode()
            found = _ok(client.post("/search", json={"image_base64": encoded, "k": 5}))
            show(f"search by photo {photo.name}", found)
            first = found["items"][0]["product_id"] if found["items"] else None
            if first:
                show(f"similar to {first}", _ok(client.post("/recommend/similar", json={"product_id": first, "k": 5})))
                recent = [item["product_id"] for item in found["items"][:3]]
                show(f"next after session {recent}",
                     _ok(client.post("/recommend/session", json={"product_ids": recent, "k": 5})))


def _ok(response: Any) -> dict[str, Any]:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                           f"{response.text[:300]}")
    return response.json()
