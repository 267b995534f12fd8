"""Every online store (``skulens.streaming.online.STORES``) against a real server where it has one:
SQLite on a file, Redis as Debian's ``redis-server`` started here on loopback. Same behaviour for
both: absolute upserts, lookups, changes since a time, and a flagged fallback when the store dies."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from skulens.settings import load_settings
from skulens.streaming.online import STORES, FeatureCache, OnlineStoreError, open_store

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_url(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing on CI (scripts/setup.sh installs Debian's redis-server)")
        pytest.skip("redis-server is not installed (Debian's redis-server package)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0", server
    server.kill()
    server.wait()


@pytest.fixture(params=sorted(STORES))
def store_settings(request, tmp_path):
    env = {"SKULENS_HOME": str(tmp_path / "home")}
    server = None
    if request.param == "redis":
        url, server = request.getfixturevalue("redis_url")
        env.update({"SKULENS__STREAM__ONLINE_STORE__BACKEND": "redis", "SKULENS__STREAM__ONLINE_STORE__REDIS_URL": url})
    return load_settings("local", env=env), server


def test_each_store_upserts_reads_and_reports_changes(store_settings):
    settings, _ = store_settings
    store = open_store(settings)
    store.upsert({"product:a": {"clicks_7d": 1}, "product:b": {"clicks_7d": 2}}, updated_at=100.0)
    store.upsert({"product:a": {"clicks_7d": 3}}, updated_at=200.0)
    store.upsert({"product:a": {"clicks_7d": 3}}, updated_at=200.0)  # a replayed batch: the same state
    assert store.get(["product:a", "product:b", "product:none"]) == {"product:a": {"clicks_7d": 3},
                                                                     "product:b": {"clicks_7d": 2}}
    assert store.changed_since(150.0) == ({"product:a": {"clicks_7d": 3}}, 200.0)
    assert store.changed_since(0.0)[0].keys() == {"product:a", "product:b"}
    store.close()


def test_a_store_that_dies_is_a_flagged_fallback_in_the_cache(store_settings, tmp_path):
    settings, server = store_settings
    store = open_store(settings)
    store.upsert({"product:a": {"ctr_prior": 0.3}})
    cache = FeatureCache(lambda: open_store(settings), refresh_s=3600, stale_s=60)
    cache.refresh()
    assert cache.status() is None and cache.lookup("product:a") == {"ctr_prior": 0.3}
    if server is not None:
        server.kill()
        server.wait()
        with pytest.raises(OnlineStoreError):
            store.get(["product:a"])
    else:  # SQLite: the file is replaced by something that is not a database, and the cache reconnects
        path = settings.home / "stream" / "online.db"
        for leftover in path.parent.glob("online.db*"):
            leftover.unlink()
        path.mkdir()
        cache._store = None
    assert cache.refresh() == 0 and cache.last_error
    cache.refreshed_at -= 61  # age the last good refresh rather than sleep: a loaded CI machine is slow
    assert cache.status() == "features_stale" and cache.lookup("product:a") == {"ctr_prior": 0.3}
