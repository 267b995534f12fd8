"""``skulens stream``: the stream job (landing zone -> events table, aggregates, online features)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from skulens.cli.common import console, fail_on_errors, settings_from

app = typer.Typer(help="The event stream: run the stream job, look at what it wrote.", no_args_is_help=True)


@app.command("run")
@fail_on_errors
def run(
    once: Annotated[bool, typer.Option("--once", help="Process what has landed, then stop (availableNow); "
                                       "the refresh_features DAG runs this.")] = False,
    trigger_s: Annotated[float | None, typer.Option("--trigger-s", help="Seconds between micro-batches "
                                                    "(default stream.trigger_s).", min=0.1)] = None,
) -> None:
    """Run the Spark Structured Streaming job over the landing zone: validate, deduplicate, join
    clicks to their searches, write the events table and dead letters, refresh the windowed
    aggregates and the online features. Exactly once across crashes (checkpointed); Ctrl-C stops it."""
    from skulens.spark.session import spark_session
    from skulens.storage.layout import stream_paths
    from skulens.streaming.job import start_query

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    settings = settings_from()
    paths = stream_paths(settings)
    console.print(f"stream job: {settings.stream.backend} source "
                  f"{paths.landing if settings.stream.backend == 'files' else settings.stream.kafka}, "
                  f"tables under {paths.root}, online store {settings.stream.online_store.backend}"
                  f"{' (once)' if once else ''}", soft_wrap=True)
    spark = spark_session(settings, app_name="skulens-stream-events")
    reports = []
    query = start_query(spark, settings, once=once, trigger_s=trigger_s,
                        on_batch=lambda r: (reports.append(r), console.print(r.line(), soft_wrap=True)))
    try:
        query.awaitTermination()
    except KeyboardInterrupt:
        query.stop()
    if query.exception() is not None:
        raise RuntimeError(f"stream job failed: {query.exception()}")
    console.print(f"done: {len(reports)} batch(es), {sum(r.events for r in reports)} events written", soft_wrap=True)


@app.command("status")
@fail_on_errors
def status() -> None:
    """Landing files waiting, events and dead letters written, the last batch."""
    import json

    from skulens.storage.layout import stream_paths
    from skulens.streaming.job import stream_status

    console.print_json(json.dumps(stream_status(stream_paths(settings_from()))))
