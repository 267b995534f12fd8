"""The stream job: landed search records and client events → events table, dead letters,
windowed aggregates and online features, exactly once (Spark Structured Streaming).

Source: the landing zone's JSON lines (Spark's file source over ``stream.files_dir``; with
``stream.backend: kafka`` the Kafka source, whose connector jar is not installed here). Each
micro-batch runs :func:`process_batch` through ``foreachBatch``:

1. **validate**: every line through :func:`skulens.streaming.records.flatten` (in ``mapInArrow``,
   so the rules are the ones ``POST /events`` applies); a bad line goes to the dead-letter table
   with its rule, field and the line itself;
2. **deduplicate**: an event id already in the events table (same day, or the days beside it) or
   earlier in the batch is a duplicate: kept once, the copy dead-lettered (rule ``duplicate``);
3. **join** client events to their search by search id (query, variant, versions): an event whose
   search is not yet known waits in the pending state of the batch; once the event time
   watermark (the newest event time seen minus ``stream.click_watermark_s``) passes it, it is
   written flagged ``orphaned``;
4. **write** the events table and dead letters as Parquet partitioned by ``date`` and ``batch_id``;
5. **aggregate** the last 7 days of the events table into per-product and per-query windows
   (1 h, 24 h, 7 d) and upsert them as online features.

Exactly once: Spark's checkpoint records the files of batch N before it runs, so a batch cut off by
a crash is replayed with the same input; every output of batch N lives under ``batch_id=N`` and is
overwritten by the replay, duplicates are looked up only in batches before N, the time the batch
was received is fixed by its first attempt, and online features are absolute values recomputed from
the table. A kill at any point therefore leaves the same rows as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skulens.storage.layout import StreamPaths, stream_paths
from skulens.streaming.records import EVENT_COLUMNS, flatten

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger(__name__)

FAULT_ENV = "SKULENS_STREAM_FAULT"  # tests only: "kill_after_events:<batch_id>"

_SCHEMA = (
    "event_id string, search_id string, ts timestamp, event_type string, catalog string, product_id string, "
    "position int, "
    "query string, query_raw string, user_id string, session_id string, endpoint string, variant string, "
    "versions string, scores string, results int, latency_ms double, fallbacks string, exploration string, "
    "orphaned boolean, "
    "received_at timestamp, line string, rule string, field string, message string, dead boolean"
)


@dataclass
class BatchReport:
    batch_id: int
    lines: int = 0
    events: int = 0
    dead: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    orphaned: int = 0
    features: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        dead = ", ".join(f"{k} {v}" for k, v in sorted(self.dead.items())) or "none"
        return (f"batch {self.batch_id}: {self.lines} lines -> {self.events} events, dead letters: {dead}; "
                f"{self.pending} waiting for their search, {self.orphaned} orphaned; {self.features} features "
                f"upserted ({self.seconds:.1f} s)")


def _arrow_schema(events_only: bool = False) -> Any:
    """The parsed rows' Arrow schema (``events_only``: the events table's own columns)."""
    import pyarrow as pa

    kinds = {"string": pa.string(), "timestamp": pa.timestamp("us", tz="UTC"), "int": pa.int32(),
             "double": pa.float64(), "boolean": pa.bool_()}
    fields = [pa.field(name, kinds[kind]) for name, kind in
              (column.strip().split(" ") for column in _SCHEMA.split(","))]
    return pa.schema([f for f in fields if not events_only or f.name in EVENT_COLUMNS])


def _parse_partitions(max_age_days: int, received_iso: str) -> Any:
    """The ``mapInArrow`` function: each landed line through ``flatten`` (the contract's rules)."""
    def parse(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        schema = _arrow_schema()
        received = datetime.fromisoformat(received_iso)
        age = timedelta(days=max_age_days)
        for batch in batches:
            rows: list[dict[str, Any]] = []
            for line in batch.column(0).to_pylist():
                good, dead = flatten(line or "", received, age)
                rows.extend({**r, "dead": False} for r in good)
                if dead is not None:
                    rows.append({**dead, "dead": True})
            yield pa.RecordBatch.from_pylist(rows, schema=schema)
    return parse


class StreamState:
    """Small per-batch state beside the tables: when the batch was received, the newest event time
    seen so far, and the client events still waiting for their search."""

    def __init__(self, paths: StreamPaths) -> None:
        self.paths = paths
        self.meta_dir = paths.state / "meta"
        self.pending_dir = paths.state / "pending"

    def received_at(self, batch_id: int) -> datetime:
        """The time batch ``batch_id`` was first received (a replay gets the same)."""
        path = self.meta_dir / f"{batch_id:012d}.received"
        if path.is_file():
            return datetime.fromisoformat(path.read_text().strip())
        now = datetime.now(UTC).replace(microsecond=0)
        _write_atomic(path, now.isoformat())
        return now

    def previous(self, batch_id: int) -> tuple[int | None, datetime | None]:
        """The last finished batch before ``batch_id`` and its newest event time."""
        done = sorted(int(p.stem) for p in self.meta_dir.glob("*.json") if int(p.stem) < batch_id) \
            if self.meta_dir.is_dir() else []
        if not done:
            return None, None
        meta = json.loads((self.meta_dir / f"{done[-1]:012d}.json").read_text())
        return done[-1], datetime.fromisoformat(meta["max_ts"]) if meta.get("max_ts") else None

    def finish(self, batch_id: int, max_ts: datetime | None) -> None:
        _write_atomic(self.meta_dir / f"{batch_id:012d}.json",
                      json.dumps({"max_ts": max_ts.isoformat() if max_ts else None}))

    def pending_path(self, batch_id: int) -> Path:
        return self.pending_dir / f"batch_id={batch_id}"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _existing(spark: SparkSession, folder: Path, batch_id: int, dates: list[str]) -> DataFrame | None:
    """Rows of ``folder`` (events table) in ``dates`` written by batches before ``batch_id``."""
    if not dates or not any(folder.glob("date=*/batch_id=*/*.parquet")):
        return None
    from pyspark.sql import functions as F

    table = spark.read.option("basePath", str(folder)).parquet(str(folder))
    return table.where(F.col("date").cast("string").isin(dates) & (F.col("batch_id") < batch_id))


def _dates_around(days: list[Any]) -> list[str]:
    out = set()
    for day in days:
        if day is None:
            continue
        for delta in (-1, 0, 1):
            out.add((day + timedelta(days=delta)).isoformat())
    return sorted(out)


def process_batch(spark: SparkSession, settings: Any, batch: DataFrame, batch_id: int,
                  store: Any = None) -> BatchReport:
    """One micro-batch (see the module docstring); ``batch`` has the landed lines in ``value``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    started = time.perf_counter()
    paths, config = stream_paths(settings), settings.stream
    state = StreamState(paths)
    report = BatchReport(batch_id)
    received = state.received_at(batch_id)
    parsed = batch.select("value").mapInArrow(_parse_partitions(config.max_event_age_days, received.isoformat()),
                                              _SCHEMA).persist()
    report.lines = batch.count()
    good = parsed.where(~F.col("dead")).drop("line", "rule", "field", "message", "dead")
    dead = parsed.where(F.col("dead")).select("line", "rule", "field", "message", "received_at")

    # 2. duplicates: within the batch (first by time, then content) and against earlier batches.
    first = Window.partitionBy("event_id").orderBy("ts", "received_at", "scores", "product_id")
    ranked = good.withColumn("_n", F.row_number().over(first))
    dupes = ranked.where(F.col("_n") > 1).drop("_n")
    good = ranked.where(F.col("_n") == 1).drop("_n")
    dates = _dates_around([r[0] for r in good.select(F.to_date("ts")).distinct().collect()])
    earlier = _existing(spark, paths.events, batch_id, dates)
    # Events still waiting for their search count as accepted too.
    pending_before = _latest_pending(spark, state, batch_id)
    known_parts = [f.select("event_id") for f in (earlier, pending_before) if f is not None]
    if known_parts:
        known = known_parts[0] if len(known_parts) == 1 else known_parts[0].unionByName(known_parts[1])
        known = known.distinct()
        dupes = dupes.unionByName(good.join(known, "event_id", "left_semi"))
        good = good.join(known, "event_id", "left_anti")
    dead = dead.unionByName(dupes.select(F.to_json(F.struct(*[F.col(c) for c in EVENT_COLUMNS])).alias("line"),
                                         F.lit("duplicate").alias("rule"), F.lit("event_id").alias("field"),
                                         F.lit("an event with this id was already accepted").alias("message"),
                                         "received_at"))

    # 3. client events with a search id wait for their search record (watermark on event time).
    _, previous_max = state.previous(batch_id)
    batch_max = good.agg(F.max("ts")).first()[0]
    candidates_max = [t for t in (previous_max, batch_max) if t is not None]
    max_ts = max(t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC) for t in candidates_max) \
        if candidates_max else None
    client = good.where(F.col("event_type").isin("click", "add_to_cart", "purchase"))
    waiting = client.where(F.col("search_id").isNotNull())
    direct = good.where(~F.col("event_type").isin("click", "add_to_cart", "purchase")) \
        .unionByName(client.where(F.col("search_id").isNull()))
    if pending_before is not None:
        waiting = waiting.unionByName(pending_before)
    searches = good.where(F.col("event_type") == "search")
    if earlier is not None:
        searches = searches.unionByName(earlier.where(F.col("event_type") == "search")
                                        .drop("date", "batch_id"), allowMissingColumns=True)
    context = searches.select("search_id", F.col("query").alias("_q"), F.col("query_raw").alias("_qr"),
                              F.col("variant").alias("_v"), F.col("versions").alias("_vs"),
                              F.col("endpoint").alias("_e"), F.col("user_id").alias("_u"),
                              F.col("session_id").alias("_s"), F.col("catalog").alias("_c")
                              ).dropDuplicates(["search_id"])
    joined = waiting.join(context, "search_id", "left")
    resolved = joined.where(F.col("_q").isNotNull() | F.col("_v").isNotNull() | F.col("_e").isNotNull()) \
        .withColumn("query", F.col("_q")).withColumn("query_raw", F.col("_qr")) \
        .withColumn("variant", F.col("_v")).withColumn("versions", F.col("_vs")) \
        .withColumn("endpoint", F.col("_e")).withColumn("user_id", F.coalesce("user_id", "_u")) \
        .withColumn("session_id", F.coalesce("session_id", "_s")).withColumn("catalog", F.col("_c"))
    unresolved = joined.where(F.col("_q").isNull() & F.col("_v").isNull() & F.col("_e").isNull())
    context_columns = ["_q", "_qr", "_v", "_vs", "_e", "_u", "_s", "_c"]
    resolved, unresolved = resolved.drop(*context_columns), unresolved.drop(*context_columns)
    if max_ts is not None:
        watermark = max_ts - timedelta(seconds=config.click_watermark_s)
        orphaned = unresolved.where(F.col("ts") < F.lit(watermark)).withColumn("orphaned", F.lit(True))
        still = unresolved.where(F.col("ts") >= F.lit(watermark))
    else:
        orphaned, still = unresolved.limit(0), unresolved
    rows = direct.unionByName(resolved).unionByName(orphaned)

    # 4. write, each output under this batch's id (a replay overwrites exactly its own output).
    events = rows.withColumn("date", F.to_date("ts")).withColumn("batch_id", F.lit(batch_id)).persist()
    report.events = events.count()
    report.orphaned = events.where(F.col("orphaned")).count()  # from the persisted rows, not the join again
    _write_partitions(events, paths.events)
    _fault("events", batch_id)
    dead_rows = dead.withColumn("date", F.to_date("received_at")).withColumn("batch_id", F.lit(batch_id)).persist()
    report.dead = {r["rule"]: r["count"] for r in dead_rows.groupBy("rule").count().collect()}
    _write_partitions(dead_rows, paths.dead_letter)
    still.write.mode("overwrite").parquet(str(state.pending_path(batch_id)))
    report.pending = spark.read.parquet(str(state.pending_path(batch_id))).count()

    # 5. aggregates and online features from the table (absolute values: a replay writes the same).
    if max_ts is not None:
        report.features = refresh_features(spark, settings, max_ts, store=store)
    state.finish(batch_id, max_ts)
    for frame in (parsed, events, dead_rows):
        frame.unpersist()
    report.seconds = time.perf_counter() - started
    return report


def _latest_pending(spark: SparkSession, state: StreamState, batch_id: int) -> DataFrame | None:
    previous, _ = state.previous(batch_id)
    if previous is None or not state.pending_path(previous).is_dir():
        return None
    return spark.read.parquet(str(state.pending_path(previous)))


def _write_partitions(frame: DataFrame, folder: Path) -> None:
    (frame.write.mode("overwrite").option("partitionOverwriteMode", "dynamic")
     .partitionBy("date", "batch_id").parquet(str(folder)))


def _fault(point: str, batch_id: int) -> None:
    """Tests only: kill this process (SIGKILL, no clean-up) after ``point`` of batch ``batch_id``."""
    if os.environ.get(FAULT_ENV) == f"kill_after_{point}:{batch_id}":
        os.kill(os.getpid(), signal.SIGKILL)


def refresh_features(spark: SparkSession, settings: Any, as_of: datetime, store: Any = None) -> int:
    """Aggregate the last 7 days (event time, up to ``as_of``) of the events table per product and
    per query; write them beside the table and upsert them into the online store; the number of
    documents upserted."""
    from skulens.streaming.features import WINDOWS_S, product_aggregates, query_aggregates
    from skulens.streaming.online import open_store

    paths = stream_paths(settings)
    if not any(paths.events.glob("date=*/batch_id=*/*.parquet")):
        return 0
    from pyspark.sql import functions as F

    since = as_of - timedelta(seconds=WINDOWS_S["7d"])
    table = spark.read.parquet(str(paths.events)).where(
        (F.col("date") >= F.lit(since.date())) & (F.col("ts") > F.lit(since)) & (F.col("ts") <= F.lit(as_of)))
    products = product_aggregates(table, as_of).toPandas()
    queries = query_aggregates(table, as_of).toPandas()
    _write_frame(products, paths.aggregates / "products.parquet")
    _write_frame(queries, paths.aggregates / "queries.parquet")
    stamp = {"as_of": as_of.isoformat()}
    documents = {f"product:{r.pop('product_id')}": {**r, **stamp} for r in _records(products)}
    documents.update({f"query:{r.pop('query')}": {**r, **stamp} for r in _records(queries)})
    own = store is None
    store = store or open_store(settings)
    try:
        store.upsert(documents)
    finally:
        if own:
            store.close()
    return len(documents)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if v != v else v) for k, v in row.items()}  # NaN -> None for JSON
            for row in frame.to_dict(orient="records")]


def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def start_query(spark: SparkSession, settings: Any, *, once: bool = False, trigger_s: float | None = None,
                on_batch: Any = None) -> StreamingQuery:
    """Start the stream job: ``once`` processes what has landed and stops (``availableNow``),
    otherwise a micro-batch every ``trigger_s`` seconds (``stream.trigger_s``)."""
    from skulens.streaming.online import open_store

    paths, config = stream_paths(settings), settings.stream
    if config.backend == "kafka":
        assert config.kafka is not None
        source = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", config.kafka.bootstrap_servers)
                  .option("subscribe", config.kafka.events_topic).option("startingOffsets", "earliest")
                  .load().selectExpr("CAST(value AS STRING) AS value"))
    else:
        paths.landing.mkdir(parents=True, exist_ok=True)
        source = (spark.readStream.format("text").option("maxFilesPerTrigger", config.max_files_per_trigger)
                  .load(str(paths.landing)))
    store = open_store(settings)

    def each(batch: DataFrame, batch_id: int) -> None:
        report = process_batch(spark, settings, batch, batch_id, store=store)
        log.info(report.line())
        if on_batch is not None:
            on_batch(report)

    writer = source.writeStream.foreachBatch(each).option("checkpointLocation", str(paths.checkpoint))
    writer = writer.trigger(availableNow=True) if once else \
        writer.trigger(processingTime=f"{trigger_s or config.trigger_s} seconds")
    return writer.start()


def stream_status(paths: StreamPaths) -> dict[str, Any]:
    """What the stream has done, read from its folders (no Spark): landing files published and
    not yet read, rows in the events and dead-letter tables, the last finished batch."""
    import pyarrow.dataset as ds

    def rows(folder: Path) -> int:
        files = sorted(folder.glob("date=*/batch_id=*/*.parquet"))
        return ds.dataset(files, format="parquet").count_rows() if files else 0

    landed = sorted(p.name for p in paths.landing.glob("events-*.jsonl")) if paths.landing.is_dir() else []
    seen: set[str] = set()
    sources = paths.checkpoint / "sources" / "0"
    if sources.is_dir():
        for log_file in sources.iterdir():
            for line in log_file.read_text(errors="replace").splitlines()[1:]:
                if line.startswith("{"):
                    seen.add(Path(json.loads(line)["path"]).name)
    last, max_ts = StreamState(paths).previous(1 << 60)
    return {"landing_files": len(landed), "landing_files_unread": len([n for n in landed if n not in seen]),
            "events": rows(paths.events), "dead_letters": rows(paths.dead_letter), "last_batch": last,
            "newest_event_time": max_ts.isoformat() if max_ts else None}
