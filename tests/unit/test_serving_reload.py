"""A published index reaches the service by itself (the watcher follows CURRENT, rollbacks too) and
by build_index's notify_serving POST, which carries the admin key."""

from __future__ import annotations

import time

import httpx
import pytest

from skulens.pipelines.build_index import post_reload
from tests.support.live_server import serve_app
from tests.unit.test_serving_app import KEY, client  # noqa: F401 - the fixture
from tests.unit.test_serving_pipeline import parts  # noqa: F401 - the fixture


def test_the_service_follows_the_published_index_and_a_rollback(client):  # noqa: F811
    state = client.state_obj
    assert state.follow_published() is None  # nothing new
    client.published["version"] = "v2"  # build_index published a new version
    assert state.follow_published() == "v2"
    assert client.post("/search", json={"text": "red shirt"}).json()["versions"]["index"] == "v2"
    client.published["version"] = "v1"  # rolled back
    assert state.follow_published() == "v1"
    assert client.post("/search", json={"text": "red shirt"}).json()["versions"]["index"] == "v1"


def test_a_version_named_by_an_admin_reload_is_pinned_until_unpinned(client):  # noqa: F811
    state = client.state_obj
    headers = {"X-API-Key": KEY}
    assert client.post("/admin/reload", json={"index_version": "v0"}, headers=headers).status_code == 200
    client.published["version"] = "v3"
    assert state.follow_published() is None and state.status()["pinned_index"] == "v0"
    assert client.post("/admin/reload", json={}, headers=headers).json()["versions"]["index"] == "v3"
    assert state.pinned_index is None


def test_the_watcher_thread_reloads_within_its_interval(client):  # noqa: F811
    state = client.state_obj
    state.watch_index(0.05)
    try:
        client.published["version"] = "v5"
        deadline = time.time() + 5
        while time.time() < deadline and state.variants["control"].pipeline.versions["index"] != "v5":
            time.sleep(0.05)
        assert state.variants["control"].pipeline.versions["index"] == "v5"
    finally:
        state.stop()


@pytest.fixture
def live_service(client):  # noqa: F811
    with serve_app(client.app) as base:
        yield base, client.state_obj


def test_notify_serving_posts_the_reload_with_the_admin_key(live_service, settings, monkeypatch):
    base, state = live_service
    configured = settings.model_copy(update={"retrieval": settings.retrieval.model_copy(
        update={"reload_url": f"{base}/admin/reload"})})
    assert post_reload(configured, "v7") == 200  # the admin endpoint answers only with the key
    assert state.variants["control"].pipeline.versions["index"] == "v7"
    assert httpx.post(f"{base}/admin/reload", json={"index_version": "v8"}).status_code == 401  # the key matters
    monkeypatch.setenv("SKULENS_ADMIN_KEY", "")
    assert post_reload(configured, "v8").startswith("skipped: $SKULENS_ADMIN_KEY is not set")
