"""The stream job on Spark: validation to dead letters, duplicates, the click-to-search join under
its watermark, windowed features in the online store, and exact counts after a SIGKILL mid-batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from skulens.settings import load_settings
from skulens.storage.layout import stream_paths
from skulens.streaming.online import SQLiteStore
from skulens.streaming.records import iso

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0)


def _search(search_id: str, products: list[str], ts: datetime, query: str = "red shirt",
            session: str | None = None) -> str:
    return json.dumps({"kind": "search", "search_id": search_id, "ts": iso(ts), "endpoint": "/search",
                       "query_raw": query, "query": query, "variant": "control", "versions": {"index": "v1"},
                       "user_id": "u1", "session_id": session or f"sess-{search_id}", "latency_ms": 10.0,
                       "fallbacks": [], "items": [{"product_id": p, "position": n, "scores": {"bm25": 1.0}}
                                                  for n, p in enumerate(products, start=1)]})


def _event(kind: str, event_id: str, product: str, ts: datetime, search_id: str | None = None,
           position: int | None = None) -> str:
    return json.dumps({"kind": kind, "event_id": event_id, "search_id": search_id, "product_id": product,
                       "position": position, "ts": iso(ts)})


def _land(home: Path, name: str, lines: list[str]) -> None:
    folder = home / "stream" / "landing"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(lines) + "\n")


def _table(folder: Path) -> list[dict]:
    files = sorted(folder.glob("date=*/batch_id=*/*.parquet"))
    return ds.dataset(files, format="parquet", partitioning="hive").to_table().to_pylist() if files else []


FIRST = [
    _search("s1", ["p1", "p2", "p3"], NOW - timedelta(minutes=5)),
    _search("s2", ["p2", "p1"], NOW - timedelta(minutes=4)),
    _event("click", "c1", "p2", NOW - timedelta(minutes=4), "s1", 2),
    _event("click", "c1", "p2", NOW - timedelta(minutes=4), "s1", 2),          # a resend: kept once
    _event("add_to_cart", "a1", "p2", NOW - timedelta(minutes=3), "s1", 2),
    _event("purchase", "b1", "p2", NOW - timedelta(minutes=2)),                 # outside search
    _event("click", "c2", "p1", NOW - timedelta(minutes=1), "s9", 1),           # its search lands later
    _event("click", "c3", "p3", NOW - timedelta(hours=2), "gone", 3),           # past the watermark: orphaned
    "{broken json",
    json.dumps({"kind": "click", "event_id": "x1", "product_id": "p1", "ts": iso(NOW)}),  # no search id
]
SECOND = [
    _search("s9", ["p1"], NOW - timedelta(minutes=1, seconds=30)),
    _event("click", "c1", "p2", NOW - timedelta(minutes=4), "s1", 2),          # the same click, a batch later
]


def _check_first(home: Path) -> None:
    paths = stream_paths(load_settings("local", env={"SKULENS_HOME": str(home)}))
    events = _table(paths.events)
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(["s1", "s1:1", "s1:2", "s1:3", "s2", "s2:1", "s2:2", "c1", "a1", "b1", "c3"])
    by_id = {e["event_id"]: e for e in events}
    assert by_id["c1"]["query"] == "red shirt" and by_id["c1"]["variant"] == "control" and not by_id["c1"]["orphaned"]
    assert by_id["c3"]["orphaned"] and by_id["c3"]["query"] is None
    dead = sorted((d["rule"], d["field"]) for d in _table(paths.dead_letter))
    assert dead == [("duplicate", "event_id"), ("json", "line"), ("required", "search_id")]
    store = SQLiteStore(paths.online_db)
    p2 = store.get(["product:p2"])["product:p2"]
    assert (p2["impressions_7d"], p2["clicks_7d"], p2["carts_7d"], p2["purchases_7d"]) == (2, 1, 1, 1)
    assert p2["popularity_7d"] == 1 + 3 + 5 and p2["ctr_7d"] == 0.5
    # position-debiased: one click over 1/2 + 1/1 expected examinations
    assert p2["debiased_ctr_7d"] == pytest.approx(1 / 1.5)
    query = store.get(["query:red shirt"])["query:red shirt"]
    assert query["searches_7d"] == 2 and query["ctr_7d"] == 0.5


def test_a_batch_validates_deduplicates_joins_and_writes_features(spark_home):
    spark, settings, run_batch = spark_home
    home = settings.home
    _land(home, "events-1.jsonl", FIRST)
    run_batch(0, FIRST)
    _check_first(home)
    paths = stream_paths(settings)
    pending = ds.dataset(str(paths.state / "pending" / "batch_id=0"), format="parquet").to_table().to_pylist()
    assert [p["event_id"] for p in pending] == ["c2"]  # within the watermark: waits for its search

    run_batch(1, SECOND)
    events = {e["event_id"]: e for e in _table(paths.events)}
    assert events["c2"]["query"] == "red shirt" and not events["c2"]["orphaned"] and events["c2"]["batch_id"] == 1
    assert sum(1 for e in _table(paths.events) if e["event_id"] == "c1") == 1
    dead = [d["rule"] for d in _table(paths.dead_letter)]
    assert dead.count("duplicate") == 2  # the resend in batch 0 and the copy in batch 1
    p1 = SQLiteStore(paths.online_db).get(["product:p1"])["product:p1"]
    assert p1["clicks_7d"] == 1 and p1["impressions_7d"] == 3

    run_batch(1, SECOND)  # batch 1 replayed (as after a crash): the same rows, not twice
    assert sorted(e["event_id"] for e in _table(paths.events)).count("c2") == 1
    assert [d["rule"] for d in _table(paths.dead_letter)].count("duplicate") == 2


@pytest.fixture(scope="module")
def spark_session_local(tmp_path_factory):
    from skulens.spark.session import spark_session

    settings = load_settings("local", env={"SKULENS_HOME": str(tmp_path_factory.mktemp("spark-home"))})
    session = spark_session(settings, app_name="skulens-test-stream")
    yield session
    session.stop()


@pytest.fixture
def spark_home(spark_session_local, tmp_path):
    from skulens.streaming.job import process_batch

    settings = load_settings("local", env={"SKULENS_HOME": str(tmp_path / "home")})

    def run_batch(batch_id: int, lines: list[str]):
        frame = spark_session_local.createDataFrame([(line,) for line in lines], "value string")
        return process_batch(spark_session_local, settings, frame, batch_id)

    return spark_session_local, settings, run_batch


def _stream_once(home: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKULENS")}
    env.update(SKULENS_HOME=str(home), SKULENS_PROJECT_ROOT=str(Path(__file__).parents[2]))
    if fault:
        env["SKULENS_STREAM_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "skulens", "stream", "run", "--once"], env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_sigkill_mid_batch_then_a_restart_gives_exact_counts(tmp_path):
    """The real stream job (``skulens stream run --once``) killed with SIGKILL after it wrote the
    events of its first batch but before Spark committed it; the restart replays that batch."""
    home = tmp_path / "home"
    _land(home, "events-1.jsonl", FIRST)
    killed = _stream_once(home, fault="kill_after_events:0")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    paths = stream_paths(load_settings("local", env={"SKULENS_HOME": str(home)}))
    assert _table(paths.events), "the killed batch had written its events"
    assert not (paths.checkpoint / "commits" / "0").exists()
    restarted = _stream_once(home)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert "batch 0:" in restarted.stdout  # the same batch, replayed
    _check_first(home)
