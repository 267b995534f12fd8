"""The events contract, the event log (queue + writer + rotated files), the online stores and the
service's feature cache: each rule, each failure mode, without Spark."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from skulens.streaming.landing import EventLog, FileSink
from skulens.streaming.online import FeatureCache, OnlineStoreError, SQLiteStore
from skulens.streaming.records import EventError, check_client_event, flatten, iso, search_record

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
CLICK = {"event_id": "e1", "type": "click", "search_id": "s1", "product_id": "p1", "position": 2,
         "ts": "2026-12-02T11:59:00Z"}


@pytest.mark.parametrize(("change", "field", "rule"), [
    ({"type": "hover"}, "type", "one_of"),
    ({"event_id": None}, "event_id", "required"),
    ({"event_id": "has space"}, "event_id", "format"),
    ({"search_id": None}, "search_id", "required"),        # a click belongs to a search
    ({"position": 0}, "position", "range"),
    ({"position": 2.5}, "position", "range"),
    ({"position": True}, "position", "range"),
    ({"ts": "yesterday"}, "ts", "type:time"),
    ({"ts": "2026-12-02T11:59:00"}, "ts", "time_zone"),
    ({"ts": "2026-12-02T12:30:00Z"}, "ts", "future"),
    ({"ts": "2026-11-01T12:00:00Z"}, "ts", "too_old"),
    ({"colour": "red"}, "colour", "unknown_field"),
    ({"user_id": 7}, "user_id", "format"),
])
def test_each_rule_of_the_events_contract_names_its_field(change, field, rule):
    event = {k: v for k, v in {**CLICK, **change}.items() if v is not None}  # None: the field is left out
    with pytest.raises(EventError) as caught:
        check_client_event(event, now=NOW)
    assert (caught.value.field, caught.value.rule) == (field, rule)


def test_a_good_event_and_a_purchase_outside_search_pass():
    click = check_client_event(CLICK, now=NOW)
    assert (click.kind, click.position, click.ts) == ("click", 2, datetime(2026, 12, 2, 11, 59, tzinfo=UTC))
    purchase = check_client_event({"event_id": "b1", "type": "purchase", "product_id": "p9"}, now=NOW)
    assert purchase.search_id is None and purchase.ts == NOW  # no time: the time received


def test_a_search_record_flattens_to_a_search_row_and_one_impression_per_product():
    body = {"items": [{"product_id": "p1", "scores": {"bm25": 1.5}}, {"product_id": "p2", "scores": {}}],
            "query": "red shirt", "variant": "control", "versions": {"index": "v1"}, "fallbacks": ["lexical_only"]}
    record = search_record("s1", "/search", body, query_raw="red shrit", user_id="u1", session_id=None,
                           latency_ms=12.5, ts=NOW)
    rows, dead = flatten(json.dumps(record), NOW)
    assert dead is None
    assert [(r["event_id"], r["event_type"], r["product_id"], r["position"]) for r in rows] == [
        ("s1", "search", None, None), ("s1:1", "impression", "p1", 1), ("s1:2", "impression", "p2", 2)]
    assert rows[0]["results"] == 2 and rows[0]["fallbacks"] == "lexical_only" and rows[0]["latency_ms"] == 12.5
    assert json.loads(rows[1]["scores"]) == {"bm25": 1.5} and rows[1]["query_raw"] == "red shrit"


@pytest.mark.parametrize(("line", "rule"), [
    ("{not json", "json"),
    ("[1, 2]", "type:object"),
    (json.dumps({"kind": "search", "search_id": "s1", "ts": iso(NOW), "items": "p1"}), "type:list"),
    (json.dumps({"kind": "search", "search_id": "s1", "ts": iso(NOW), "items": [{"product_id": "p", "position": 0}]}),
     "range"),
    (json.dumps({**CLICK, "kind": "click", "type": None, "pad": "x" * 300_000}), "oversized"),
    (json.dumps({**CLICK, "ts": iso(NOW - timedelta(days=8))}), "too_old"),
])
def test_a_bad_landed_line_becomes_a_dead_letter_with_its_rule(line, rule):
    rows, dead = flatten(line, NOW)
    assert rows == [] and dead["rule"] == rule and dead["line"] == line[:4096]


def test_the_event_log_publishes_whole_files_only_and_flushes_on_close(tmp_path):
    sink = FileSink(tmp_path, rotate_s=60, rotate_bytes=10_000_000)
    log = EventLog(sink)
    for n in range(250):
        assert log.offer({"kind": "click", "event_id": f"e{n}"})
    time.sleep(0.5)
    assert list(tmp_path.glob("events-*.jsonl")) == []  # still being written: hidden from the stream job
    assert len(list(tmp_path.glob(".events-*.part"))) == 1
    log.close()
    published = list(tmp_path.glob("events-*.jsonl"))
    assert len(published) == 1 and not list(tmp_path.glob(".events-*"))
    lines = published[0].read_text().splitlines()
    assert [json.loads(line)["event_id"] for line in lines] == [f"e{n}" for n in range(250)]
    assert log.written == 250 and log.dropped == {}


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    class Stuck(FileSink):
        def write(self, lines):  # a disk that stalls
            time.sleep(0.5)
            super().write(lines)

    drops = []
    log = EventLog(Stuck(tmp_path), max_queue=10, max_batch=1, on_drop=lambda reason, n: drops.append(reason))
    started = time.perf_counter()
    accepted = sum(log.offer({"n": n}) for n in range(100))
    assert time.perf_counter() - started < 0.45  # never waits for the writer (one stuck write takes 0.5 s)
    assert accepted <= 12 and drops.count("queue_full") == 100 - accepted
    log.close(timeout_s=20)
    assert log.written == accepted


def test_an_unwritable_landing_zone_counts_the_loss_and_recovers(tmp_path):
    blocker = tmp_path / "landing"
    blocker.write_text("a file where the folder should be")  # mkdir fails: as a read-only or full disk
    drops = []
    log = EventLog(FileSink(blocker, rotate_s=0.1), idle_s=0.05, on_drop=lambda reason, n: drops.append((reason, n)))
    log.offer({"n": 1})
    deadline = time.time() + 5
    while not drops and time.time() < deadline:
        time.sleep(0.05)
    assert drops == [("write_error", 1)] and "landing" in (log.last_error or "")
    blocker.unlink()  # the disk is back
    log.offer({"n": 2})
    log.close()
    assert [json.loads(f.read_text()) for f in blocker.glob("events-*.jsonl")] == [{"n": 2}]


def test_the_sqlite_store_upserts_absolute_values_and_reports_changes(tmp_path):
    store = SQLiteStore(tmp_path / "online.db")
    store.upsert({"product:a": {"clicks_7d": 1}, "product:b": {"clicks_7d": 2}}, updated_at=100.0)
    store.upsert({"product:a": {"clicks_7d": 3}}, updated_at=200.0)  # a replay writes the same value again
    assert store.get(["product:a", "product:b", "product:zz"]) == {"product:a": {"clicks_7d": 3},
                                                                   "product:b": {"clicks_7d": 2}}
    assert store.changed_since(150.0) == ({"product:a": {"clicks_7d": 3}}, 200.0)
    assert store.changed_since(200.0) == ({}, 200.0)


def test_the_feature_cache_flags_a_store_that_is_down_or_stale(tmp_path):
    store = SQLiteStore(tmp_path / "online.db")
    store.upsert({"product:a": {"ctr_prior": 0.2}})
    up = {"ok": True}

    def opener():
        if not up["ok"]:
            raise OnlineStoreError("connection refused")
        return store

    cache = FeatureCache(opener, refresh_s=60, stale_s=60)
    assert cache.status() == "features_unavailable"  # never read
    cache.refresh()
    assert cache.status() is None and cache.lookup("product:a") == {"ctr_prior": 0.2}
    store.upsert({"product:a": {"ctr_prior": 0.5}})
    assert cache.refresh() == 1 and cache.lookup("product:a") == {"ctr_prior": 0.5}
    up["ok"] = False
    cache._store = None  # the connection is lost
    assert cache.refresh() == 0 and "connection refused" in cache.last_error
    cache.refreshed_at -= 61  # age the last good refresh rather than sleep: a loaded CI machine is slow
    assert cache.status() == "features_stale" and cache.lookup("product:a") == {"ctr_prior": 0.5}


def test_landing_files_are_named_for_their_writer(tmp_path):
    sink = FileSink(tmp_path)
    sink.write(['{"a": 1}'])
    sink.rotate()
    (name,) = [p.name for p in tmp_path.iterdir()]
    assert name.startswith(f"events-{os.getpid()}-") and name.endswith(".jsonl")
