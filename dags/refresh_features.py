"""Airflow DAG ``refresh_features``: the stream job once over what the service has landed
(Spark Structured Streaming, ``availableNow``) -> events table, aggregates and online features ->
a dead-letter check. Every 15 minutes, or by hand.

Wiring only: each task imports skulens inside its body (``skulens.pipelines.refresh_features``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task

EVENTS_TABLE = Asset(name="skulens_events", uri="file:///skulens/stream/tables/events")
ONLINE_FEATURES = Asset(name="skulens_online_features", uri="file:///skulens/stream/online")

DOC = """
### refresh_features

1. **stream_once**: the stream job over every landed file not yet read (`availableNow`; the same
   checkpoint as `skulens stream run`, so a crash or a killed run resumes exactly): validation to
   the dead-letter table, duplicates removed, clicks joined to their searches under the watermark,
   the events table (Parquet by `date` and `batch_id`), 1 h / 24 h / 7 d aggregates and the online
   features (SQLite here, Redis in production);
2. **check_dead_letters**: fails the run, naming the rule and a line, when more than
   `max_dead_fraction` of the landed lines broke a rule (duplicates aside). What was written stays:
   the dead letters are the evidence.

Do not run it beside a continuous `skulens stream run` on the same checkpoint.
"""


def _settings():  # noqa: ANN202 - imported lazily to keep DAG parsing light
    from skulens.settings import load_settings

    return load_settings()


@dag(
    dag_id="refresh_features",
    doc_md=DOC,
    schedule=timedelta(minutes=15),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=14),
    tags=["skulens", "stream", "features"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1), "owner": "skulens"},
    params={"max_dead_fraction": Param(0.05, type="number", minimum=0, maximum=1,
                                       description="largest share of landed lines that may break a rule")},
)
def refresh_features():
    @task(outlets=[EVENTS_TABLE, ONLINE_FEATURES])
    def stream_once() -> dict:
        from skulens.pipelines.refresh_features import run_stream_once

        return run_stream_once(_settings())

    # Bad data is not transient: no retries.
    @task(retries=0)
    def check_dead_letters(summary: dict) -> dict:
        from skulens.pipelines.refresh_features import check_dead_letters as check

        fraction = float(get_current_context()["params"]["max_dead_fraction"])
        return check(summary, fraction, _settings())

    check_dead_letters(stream_once())


refresh_features()
