"""Admission control: past what a worker may run and queue, a search gets 503 with Retry-After at
once (never a degraded page), a queued search runs at full quality once a slot frees, and every
decision is counted; the per-stage fallback series the alert rules read are exposed."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from skulens.serving.admission import Admission, AdmissionConfig, Overloaded
from skulens.serving.app import create_app
from skulens.serving.metrics import ServingMetrics
from skulens.serving.pipeline import SearchResult, ServingConfig, StageReport

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


class SlowState:
    """A served state whose searches block until released (a busy worker)."""

    def __init__(self) -> None:
        self.config = ServingConfig()
        self.metrics = ServingMetrics.standalone()
        self.release = threading.Event()
        self.started = 0

    def search(self, request):
        self.started += 1
        self.release.wait(5)
        result = SearchResult([], request.text, [], [StageReport("retrieve", 1.0, "ok")], [], {"index": "v1"})
        self.metrics.observe_search(result)
        return result.to_dict()


async def _burst(admission: AdmissionConfig, searches: int, release_after_s: float = 0.2):
    state = SlowState()
    app = create_app(lambda: state, admission=admission)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        async def release() -> None:
            await asyncio.sleep(release_after_s)
            state.release.set()

        responses, _ = await asyncio.gather(
            asyncio.gather(*(client.post("/search", json={"text": f"q{i}"}) for i in range(searches))), release())
        metrics = (await client.get("/metrics")).text
    return state, responses, metrics


def test_searches_past_the_slots_and_the_queue_get_503_with_retry_after_at_once():
    state, responses, metrics = asyncio.run(_burst(AdmissionConfig(max_active=2, max_waiting=1, max_wait_ms=2000), 6))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 200, 503, 503, 503]  # 2 running + 1 queued served, 3 refused
    refused = [r for r in responses if r.status_code == 503]
    assert all(r.headers["Retry-After"] == "1" and "overloaded" in r.json()["error"] for r in refused)
    assert state.started == 3  # a refused search never reached the pipeline
    assert 'skulens_admission_total{endpoint="/search",outcome="refused"} 3.0' in metrics
    assert 'skulens_admission_total{endpoint="/search",outcome="waited"} 1.0' in metrics
    assert 'skulens_requests_total{endpoint="/search",status="503"} 3.0' in metrics


def test_a_search_that_waits_too_long_for_a_slot_is_refused_not_degraded():
    state, responses, _ = asyncio.run(_burst(AdmissionConfig(max_active=1, max_waiting=4, max_wait_ms=50), 3,
                                             release_after_s=0.5))
    assert sorted(r.status_code for r in responses) == [200, 503, 503]
    assert all("within 50 ms" in r.json()["error"] for r in responses if r.status_code == 503)
    ok = [r.json() for r in responses if r.status_code == 200]
    assert ok[0]["fallbacks"] == []


def test_with_room_every_search_is_served_and_the_stage_series_are_exposed():
    _, responses, metrics = asyncio.run(_burst(AdmissionConfig(max_active=4, max_waiting=8), 10))
    assert [r.status_code for r in responses] == [200] * 10
    assert 'skulens_stage_outcomes_total{stage="retrieve",status="ok"} 10.0' in metrics
    assert 'skulens_searches_total{degraded="false"} 10.0' in metrics


def test_admission_releases_its_slot_when_a_search_fails():
    async def run() -> None:
        gate = Admission(AdmissionConfig(max_active=1, max_waiting=0))
        await gate.enter()
        with pytest.raises(Overloaded):
            await gate.enter()
        gate.leave()
        assert await gate.enter() == 0.0
        assert (gate.active, gate.refused) == (1, 1)

    asyncio.run(run())
    with pytest.raises(ValueError, match="admission settings"):
        AdmissionConfig(max_active=0)


def test_the_alert_rules_read_series_the_service_exposes():
    metrics = ServingMetrics.standalone()
    metrics.observe_search(SimpleNamespace(stages=[StageReport("rerank", 3.0, "fallback")], fallbacks=["x"],
                                           cache={}, items=[]))
    metrics.admission.labels(endpoint="/search", outcome="refused").inc()
    exposed = metrics.exposition().decode()
    rules = (RULES / "serving-rules.yml").read_text(encoding="utf-8")
    for series in ("skulens_stage_outcomes_total", "skulens_searches_total", "skulens_admission_total"):
        assert series in rules and f"{series}{{" in exposed


def test_promtool_accepts_the_rules_and_their_alerts_fire_on_faults_only():
    if shutil.which("promtool") is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing on CI (scripts/setup.sh installs Debian's prometheus)")
        pytest.skip("promtool is not installed: the alert rule test needs Debian's prometheus package")
    check = subprocess.run(["promtool", "check", "rules", "serving-rules.yml"], cwd=RULES, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(["promtool", "test", "rules", "serving-rules.test.yml"], cwd=RULES, capture_output=True,
                          text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr
