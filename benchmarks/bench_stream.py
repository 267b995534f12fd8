"""Benchmark: the loop's plumbing. What logging costs a search, how many events per second the
stream job writes, and how long a click takes to reach the service's feature cache.

    .venv/bin/python benchmarks/bench_stream.py [--searches 20000] [--freshness-runs 5]

Writes docs/benchmarks/stream.md (and .json). Every event here is SIMULATED (generated search
records over made-up product ids, 10 results each, clicks on 30% of searches); the figures are of
the plumbing, not of shopper behaviour.

1. **Logging cost**: the time a request spends in ``ServiceEvents.record_search`` (search id, the
   record built and enqueued; the writer thread does the rest), over 20,000 calls with the writer
   running, p50/p95/p99; and the writer's own throughput (records/s to rotated files).
2. **Stream throughput**: ``skulens stream run --once`` (a fresh process: Spark start included in the
   wall time, reported apart) over the landed files; events written per second of batch time.
3. **Freshness**: a continuous ``skulens stream run`` (its configured trigger); a click is offered
   to the event log and the clock runs until a ``FeatureCache`` (the service's, refreshing every
   ``stream.features_refresh_s``) shows the product's new click count.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from _report import machine_description, write_report

ROOT = Path(__file__).resolve().parents[1]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKULENS")}
    env.update(SKULENS_HOME=str(home), SKULENS_PROJECT_ROOT=str(ROOT), SPARK_LOCAL_IP="127.0.0.1", **extra)
    return env


def _body(rng: random.Random, products: int) -> dict:
    items = [{"product_id": f"p{rng.randrange(products)}", "title": "t",
              "scores": {"bm25": rng.random() * 10, "dense": rng.random(), "fused": rng.random(),
                         "rerank": rng.random()}} for _ in range(10)]
    return {"items": items, "query": f"query {rng.randrange(2000)}", "variant": "control",
            "versions": {"index": "v1", "embedder": "e/1", "reranker": "r/1"}, "fallbacks": []}


def logging_cost(home: Path, calls: int) -> dict:
    from skulens.serving.feedback import ServiceEvents
    from skulens.serving.metrics import ServingMetrics
    from skulens.settings import load_settings

    settings = load_settings("local", env={"SKULENS_HOME": str(home)})
    events = ServiceEvents.from_settings(settings, ServingMetrics.standalone(), catalog="bench")
    rng = random.Random(1)
    bodies = [_body(rng, 50_000) for _ in range(500)]
    timings = []
    started = time.perf_counter()
    for n in range(calls):
        body = dict(bodies[n % len(bodies)])
        t = time.perf_counter()
        events.record_search("/search", body, query_raw=body["query"], user_id=f"u{n % 977}",
                             session_id=f"s{n % 3001}", latency_ms=40.0)
        timings.append((time.perf_counter() - t) * 1e6)
    offered_s = time.perf_counter() - started
    close = time.perf_counter()
    events.close()
    drain_s = time.perf_counter() - close
    timings.sort()
    q = lambda p: round(timings[min(len(timings) - 1, int(p * len(timings)))], 1)  # noqa: E731
    log = events.log
    return {"calls": calls, "p50_us": q(0.50), "p95_us": q(0.95), "p99_us": q(0.99), "max_us": round(timings[-1], 1),
            "written": log.written, "dropped": log.dropped,
            "writer_records_per_s": round(log.written / (offered_s + drain_s)), "files": log.sink.files_written}


def land(home: Path, searches: int, seed: int = 7) -> dict:
    """Search records and clicks as the service writes them (through the event log)."""
    from skulens.serving.feedback import ServiceEvents
    from skulens.serving.metrics import ServingMetrics
    from skulens.settings import load_settings

    settings = load_settings("local", env={"SKULENS_HOME": str(home)})
    events = ServiceEvents.from_settings(settings, ServingMetrics.standalone(), catalog="bench")
    rng = random.Random(seed)
    clicks = 0
    for n in range(searches):
        body = _body(rng, 20_000)
        search_id = events.record_search("/search", body, query_raw=body["query"], user_id=f"u{n % 977}",
                                         session_id=f"s{n % 3001}", latency_ms=40.0)
        if rng.random() < 0.3:
            position = min(10, int(rng.expovariate(0.5)) + 1)
            events.accept({"events": [{"event_id": uuid.uuid4().hex, "type": "click", "search_id": search_id,
                                       "product_id": body["items"][position - 1]["product_id"],
                                       "position": position}]})
            clicks += 1
        while events.log.backlog > 5000:
            time.sleep(0.01)
    events.close()
    return {"searches": searches, "clicks": clicks, "impressions": searches * 10,
            "events": searches * 11 + clicks, "dropped": events.log.dropped}


def stream_once(home: Path) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "skulens", "stream", "run", "--once"], env=_env(home),
                          capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    batches = [line for line in done.stdout.splitlines() if line.startswith("batch ")]
    seconds = sum(float(line.rsplit("(", 1)[1].split(" s)")[0]) for line in batches if "(" in line)
    events = int(done.stdout.rsplit("batch(es), ", 1)[1].split(" events")[0])
    return {"wall_s": round(wall, 1), "batch_s": round(seconds, 1), "batches": len(batches), "events_written": events,
            "events_per_s_batch": round(events / seconds) if seconds else None,
            "events_per_s_wall": round(events / wall)}


def freshness(home: Path, runs: int) -> dict:
    from skulens.serving.feedback import ServiceEvents
    from skulens.serving.metrics import ServingMetrics
    from skulens.settings import load_settings
    from skulens.streaming.online import FeatureCache, open_store

    settings = load_settings("local", env={"SKULENS_HOME": str(home)})
    job = subprocess.Popen([sys.executable, "-m", "skulens", "stream", "run"], env=_env(home),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    events = ServiceEvents.from_settings(settings, ServingMetrics.standalone(), catalog="bench")
    cache = FeatureCache(lambda: open_store(settings), settings.stream.features_refresh_s).start()
    rng = random.Random(3)
    seconds = []
    try:
        # Warm-up: the first micro-batch pays for the Python workers' start.
        for n in range(runs + 1):
            body = _body(rng, 1_000_000)
            product = f"fresh-{n}"
            body["items"][0]["product_id"] = product
            search_id = events.record_search("/search", body, query_raw="q", user_id="u", session_id=f"f{n}",
                                             latency_ms=1.0)
            time.sleep(0.2)
            clicked = time.perf_counter()
            events.accept({"event_id": f"fresh-click-{n}", "type": "click", "search_id": search_id,
                           "product_id": product, "position": 1})
            deadline = clicked + 300
            while time.perf_counter() < deadline:
                found = cache.lookup(f"product:{product}")
                if found and found.get("clicks_1h", 0) >= 1:
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError("the click never reached the feature cache")
            if n:
                seconds.append(round(time.perf_counter() - clicked, 2))
    finally:
        events.close()
        cache.close()
        job.terminate()
        job.wait(30)
    return {"runs": runs, "seconds": seconds, "max_s": max(seconds), "median_s": sorted(seconds)[len(seconds) // 2],
            "trigger_s": settings.stream.trigger_s, "rotate_s": settings.stream.rotate_s,
            "features_refresh_s": settings.stream.features_refresh_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searches", type=int, default=20_000)
    parser.add_argument("--log-calls", type=int, default=20_000)
    parser.add_argument("--freshness-runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cost = logging_cost(Path(tmp) / "cost", args.log_calls)
        print("logging", cost, flush=True)
        landed = land(Path(tmp) / "throughput", args.searches)
        print("landed", landed, flush=True)
        through = stream_once(Path(tmp) / "throughput")
        print("stream", through, flush=True)
        fresh = freshness(Path(tmp) / "fresh", args.freshness_runs)
        print("freshness", fresh, flush=True)
    command = "python benchmarks/bench_stream.py " + " ".join(sys.argv[1:])
    lines = [
        "# Stream: logging cost, stream job throughput, click-to-feature freshness",
        "",
        f"`{command.strip()}` on {machine_description()}, {datetime.now(UTC):%Y-%m-%d}. "
        "All events SIMULATED (generated search records and clicks); the figures are of the plumbing.",
        "",
        "## Logging cost in the request path (aim: at most 1 ms p95)",
        "",
        "| calls | p50 | p95 | p99 | max | writer records/s | dropped |",
        "|---|---|---|---|---|---|---|",
        f"| {cost['calls']:,} | {cost['p50_us']} µs | {cost['p95_us']} µs | {cost['p99_us']} µs | {cost['max_us']} µs "
        f"| {cost['writer_records_per_s']:,} | {cost['dropped'] or 'none'} |",
        "",
        "A search pays for `record_search` only: a search id, the record (10 results with 4 scores each) "
        "and a non-blocking enqueue; serialisation and file writes run on the writer thread.",
        "",
        "## Stream job throughput (aim: at least 5,000 events/s on 2 cores)",
        "",
        "| searches | clicks | events written | batches | batch time | events/s (batch time) "
        "| wall incl. Spark start | events/s (wall) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {landed['searches']:,} | {landed['clicks']:,} | {through['events_written']:,} | {through['batches']} "
        f"| {through['batch_s']} s | {through['events_per_s_batch']:,} | {through['wall_s']} s "
        f"| {through['events_per_s_wall']:,} |",
        "",
        "Events are rows of the events table: a search row, 10 impression rows per search, and the clicks. "
        "Batch time includes validation, deduplication against the table, the click join, the Parquet writes, "
        "the 7-day aggregates and the online-store upserts.",
        "",
        "## Click-to-feature freshness (aim: at most 60 s with the continuous trigger)",
        "",
        f"Continuous `skulens stream run` (trigger {fresh['trigger_s']} s), landing files rotated every "
        f"{fresh['rotate_s']} s, the service's feature cache refreshed every {fresh['features_refresh_s']} s: "
        f"from `POST /events` to the click in the cache, median **{fresh['median_s']} s**, max {fresh['max_s']} s "
        f"over {fresh['runs']} clicks ({', '.join(str(s) for s in fresh['seconds'])} s).",
    ]
    write_report("stream", lines, {"command": command, "machine": machine_description(),
                                   "date": f"{datetime.now(UTC):%Y-%m-%d}", "simulated": True,
                                   "logging": cost, "landed": landed, "stream": through, "freshness": fresh})


if __name__ == "__main__":
    main()
