"""The service's side of the loop over its HTTP app: search ids, search records in the landing zone,
``POST /events`` validation and duplicates, online features in the ranking input and their fallbacks."""

from __future__ import annotations

import json
import time

import pytest

from skulens.serving.feedback import ServiceEvents
from skulens.streaming.landing import EventLog, FileSink
from skulens.streaming.online import FeatureCache, OnlineStoreError, SQLiteStore
from tests.unit.test_serving_app import client  # noqa: F401 - the fixture
from tests.unit.test_serving_pipeline import parts  # noqa: F401 - the fixture


@pytest.fixture
def landing(client, tmp_path):  # noqa: F811
    state = client.state_obj
    folder = tmp_path / "landing"
    state.events = ServiceEvents(EventLog(FileSink(folder, rotate_s=0.05), idle_s=0.02), state.metrics)
    yield folder
    state.events.close()


def _landed(folder, wanted: int, timeout_s: float = 5.0) -> list[dict]:
    deadline = time.time() + timeout_s
    while True:
        records = [json.loads(line) for f in sorted(folder.glob("events-*.jsonl"))
                   for line in f.read_text().splitlines()]
        if len(records) >= wanted or time.time() > deadline:
            return records
        time.sleep(0.05)


def test_every_answer_has_a_search_id_and_lands_as_a_search_record(client, landing):  # noqa: F811
    search = client.post("/search", json={"text": "red shrit", "k": 3, "user_id": "u1", "session_id": "s1"}).json()
    similar = client.post("/recommend/similar", json={"product_id": "p0", "k": 2}).json()
    assert search["search_id"] != similar["search_id"] and len(search["search_id"].split(".")[0]) == 32
    records = {r["search_id"]: r for r in _landed(landing, 2)}
    record = records[search["search_id"]]
    assert record["kind"] == "search" and record["endpoint"] == "/search"
    assert (record["query_raw"], record["query"]) == ("red shrit", "red shirt")
    assert (record["user_id"], record["session_id"], record["variant"]) == ("u1", "s1", "control")
    assert record["versions"] == search["versions"] and record["latency_ms"] > 0
    assert [(i["product_id"], i["position"]) for i in record["items"]] == [
        (item["product_id"], n) for n, item in enumerate(search["items"], start=1)]
    assert record["items"][0]["scores"] == search["items"][0]["scores"]  # per-stage scores as served
    assert records[similar["search_id"]]["endpoint"] == "/recommend/similar"


def test_client_events_are_validated_and_a_duplicate_is_taken_once(client, landing):  # noqa: F811
    search_id = client.post("/search", json={"text": "red shirt", "k": 3}).json()["search_id"]
    click = {"event_id": "ev-1", "type": "click", "search_id": search_id, "product_id": "p1", "position": 1}
    first = client.post("/events", json={"events": [click, {**click, "event_id": "ev-2", "type": "add_to_cart"}]})
    assert first.status_code == 200 and first.json() == {"accepted": 2, "duplicates": []}
    again = client.post("/events", json=click)  # a single event object is fine too
    assert again.json() == {"accepted": 0, "duplicates": ["ev-1"]}
    bad = client.post("/events", json={"events": [click, {**click, "event_id": "ev-3", "position": 0}]})
    assert bad.status_code == 400
    assert bad.json()["error"] == "events[1].position: must be an integer from 1 to 5000, got 0 (rule range)"
    assert client.post("/events", json={"events": []}).status_code == 400
    assert client.post("/events", json={"events": [click] * 101}).status_code == 400
    landed = [r for r in _landed(landing, 3) if r["kind"] != "search"]
    assert sorted(r["event_id"] for r in landed) == ["ev-1", "ev-2"]  # nothing of the rejected request
    metrics = client.get("/metrics").text
    assert 'skulens_client_events_total{outcome="duplicate",type="click"} 1.0' in metrics


def test_online_features_enter_the_ranking_input_and_a_dead_store_is_a_flagged_fallback(client, tmp_path):  # noqa: F811
    state = client.state_obj
    store = SQLiteStore(tmp_path / "online.db")
    store.upsert({"product:p1": {"ctr_prior": 0.42, "popularity_7d": 7.0}})
    up = {"ok": True}

    def opener():
        if not up["ok"]:
            raise OnlineStoreError("connection refused")
        return store

    # Staleness is judged from refreshed_at; the test ages it instead of sleeping, so a slow search on a
    # loaded CI machine cannot cross the window in between.
    state.features = FeatureCache(opener, refresh_s=3600, stale_s=60)
    state.features.refresh()
    body = client.post("/search", json={"text": "red shirt", "k": 10}).json()
    scored = {item["product_id"]: item["scores"] for item in body["items"]}
    assert scored["p1"]["ctr_prior"] == 0.42 and scored["p1"]["popularity_7d"] == 7.0
    assert "ctr_prior" not in scored.get("p0", {})  # no events yet: no feature, and no error
    assert "features_stale" not in body["fallbacks"]
    up["ok"] = False
    state.features._store = None
    state.features.refresh()
    state.features.refreshed_at -= 61  # the last good refresh is now older than the window
    stale = client.post("/search", json={"text": "red shirt", "k": 10})
    assert stale.status_code == 200 and "features_stale" in stale.json()["fallbacks"]
    state.features = FeatureCache(opener, refresh_s=3600)  # never reached the store
    state.features.refresh()
    unavailable = client.post("/search", json={"text": "red shirt", "k": 10}).json()
    assert "features_unavailable" in unavailable["fallbacks"]
    assert all("ctr_prior" not in item["scores"] for item in unavailable["items"])


def test_a_cold_start_session_ranks_by_live_popularity_when_the_store_has_it(client, tmp_path):  # noqa: F811
    state = client.state_obj
    store = SQLiteStore(tmp_path / "online.db")
    cold = {"product_ids": [], "category": "shirt", "k": 3}
    before = client.post("/recommend/session", json=cold).json()
    assert not before["source"].startswith("popular_in_category (online")
    store.upsert({"product:p12": {"popularity_7d": 9.0}, "product:p4": {"popularity_7d": 2.0},
                  "product:p1": {"popularity_7d": 50.0}})  # p1 is a dress: not in the category
    state.features = FeatureCache(lambda: store, refresh_s=3600)
    state.features.refresh()
    state.variants["control"].recommender = None  # made anew with the cache
    after = client.post("/recommend/session", json=cold).json()
    assert after["source"] == "popular_in_category (online, 7 days)"
    assert [i["product_id"] for i in after["items"][:2]] == ["p12", "p4"]
