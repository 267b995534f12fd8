"""Prometheus for real against a running search service: it scrapes ``/metrics``, the service's
alert and SLO rules evaluate on what it scraped, nothing fires while searches are healthy, and
injected faults fire the alerts that docs/operations.md answers: a crashing reranker (fallbacks on
every search) and a crashing pipeline (5xx, the availability SLO's burn).

The rules are the deployed files with ``for:`` shortened to 0 s and the scrape and evaluation
interval to 1 s, so that the test takes seconds, not the minutes of a real page."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from skulens.serving.app import create_app
from tests.support.live_server import serve_app
from tests.unit.test_serving_app import client  # noqa: F401 - the fixture
from tests.unit.test_serving_pipeline import parts  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prometheus(client, tmp_path):  # noqa: F811
    if shutil.which("prometheus") is None:
        import os

        if os.environ.get("CI"):
            pytest.fail("prometheus is missing on CI (scripts/setup.sh installs Debian's prometheus)")
        pytest.skip("prometheus is not installed (Debian's prometheus package)")
    state = client.state_obj
    with serve_app(create_app(lambda: state)) as service:
        for name in ("serving-rules.yml", "slo-rules.yml"):
            text = (RULES / name).read_text(encoding="utf-8")
            (tmp_path / name).write_text(re.sub(r"for: \d+m", "for: 0s", text), encoding="utf-8")
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [serving-rules.yml, slo-rules.yml]\n"
            "scrape_configs:\n"
            f"  - job_name: skulens-search\n    static_configs: [{{targets: ['{service.removeprefix('http://')}']}}]\n",
            encoding="utf-8")
        port = _free_port()
        process = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"))
        try:
            yield state, service, f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=30)


def _until(check, timeout_s: float = 60, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


def _firing(prom: str) -> set[str]:
    alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return {a["labels"]["alertname"] + (f":{a['labels']['stage']}" if "stage" in a["labels"] else "")
            for a in alerts if a["state"] == "firing"}


def _search(service: str, n: int) -> list[int]:
    return [httpx.post(f"{service}/search", json={"text": "red shirt", "k": 5}, timeout=30).status_code
            for _ in range(n)]


def test_prometheus_scrapes_the_service_and_fires_on_injected_faults_only(prometheus):
    state, service, prom = prometheus

    def ready() -> bool:
        try:
            return httpx.get(f"{prom}/-/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False
    assert _until(ready, timeout_s=30), "prometheus did not start"
    up = _until(lambda: [t for t in httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
                         if t["health"] == "up"], timeout_s=60)
    assert up, "the scrape never succeeded"

    assert _search(service, 20) == [200] * 20

    def searches_scraped() -> float:
        result = httpx.get(f"{prom}/api/v1/query", params={"query": "sum(skulens_searches_total)"},
                           timeout=10).json()["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0
    assert _until(lambda: searches_scraped() >= 20, timeout_s=30), searches_scraped()
    time.sleep(4)  # several evaluations over healthy traffic
    assert _firing(prom) == set()

    pipeline = state.variants["control"].pipeline

    def crashing_reranker(query, titles):
        raise RuntimeError("reranker weights are corrupt")
    pipeline.reranker = crashing_reranker
    assert _search(service, 20) == [200] * 20  # a fallback keeps answering ...
    # Traffic goes on while waiting, as in production: a rate needs the counter to grow between two
    # scrapes, and on a loaded machine one scrape may see all of a short burst at once.
    fired = _until(lambda: _search(service, 2) and
                   {"SkulensStageFallbacks:rerank", "SkulensDegradedSearches"} <= _firing(prom))
    assert fired, _firing(prom)  # ... and pages

    def crashing_search(request, *, entered=False):
        raise RuntimeError("index file truncated")
    pipeline.search = crashing_search
    assert set(_search(service, 20)) == {500}
    assert _until(lambda: _search(service, 2) and "SkulensAvailabilityFastBurn" in _firing(prom)), _firing(prom)
