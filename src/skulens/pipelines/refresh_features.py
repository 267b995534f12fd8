"""The ``refresh_features`` pipeline: one run of the stream job over what has landed
(``availableNow``), then a check of what it dead-lettered.

The Airflow DAG ``refresh_features`` runs it every 15 minutes; ``skulens stream run`` runs the same
job continuously instead. Both share the checkpoint, so either may pick up where the other stopped
(never both at once: the DAG allows one run at a time, and a continuous job should not run beside it).
"""

from __future__ import annotations

from typing import Any

from skulens.storage.layout import stream_paths


class DeadLetterError(RuntimeError):
    """More of a run's landed lines broke a rule than ``max_dead_fraction`` allows."""


def run_stream_once(settings: Any) -> dict[str, Any]:
    """Process everything landed so far; the batches' counts (events written, dead letters by rule)."""
    from skulens.spark.session import spark_session
    from skulens.streaming.job import start_query

    reports: list[Any] = []
    spark = spark_session(settings, app_name="skulens-refresh-features")
    query = start_query(spark, settings, once=True, on_batch=reports.append)
    query.awaitTermination()
    if query.exception() is not None:
        raise RuntimeError(f"stream job failed: {query.exception()}")
    dead: dict[str, int] = {}
    for report in reports:
        for rule, n in report.dead.items():
            dead[rule] = dead.get(rule, 0) + n
    return {"batches": [r.batch_id for r in reports], "lines": sum(r.lines for r in reports),
            "events": sum(r.events for r in reports), "dead": dead,
            "orphaned": sum(r.orphaned for r in reports), "features": sum(r.features for r in reports)}


def check_dead_letters(summary: dict[str, Any], max_dead_fraction: float = 0.05,
                       settings: Any = None) -> dict[str, Any]:
    """DeadLetterError naming the commonest rule (and one of its lines) when more than
    ``max_dead_fraction`` of the run's lines were dead-lettered; duplicates do not count (a resend
    is normal client behaviour, not bad data)."""
    bad = {rule: n for rule, n in summary["dead"].items() if rule != "duplicate"}
    lines = max(summary["lines"], 1)
    share = sum(bad.values()) / lines
    if share > max_dead_fraction:
        rule = max(bad, key=bad.get)
        example = _example(settings, rule) if settings is not None else None
        raise DeadLetterError(f"{sum(bad.values())} of {summary['lines']} landed lines broke a rule "
                              f"({share:.1%} > {max_dead_fraction:.0%}); most often {rule!r} ({bad[rule]})"
                              + (f", for example: {example}" if example else ""))
    return {"dead_share": round(share, 4), **summary}


def _example(settings: Any, rule: str) -> str | None:
    import pyarrow.dataset as ds

    files = sorted(stream_paths(settings).dead_letter.glob("date=*/batch_id=*/*.parquet"))
    if not files:
        return None
    table = ds.dataset(files[-50:], format="parquet").to_table(columns=["rule", "field", "message", "line"])
    for row in table.to_pylist()[::-1]:
        if row["rule"] == rule:
            return f"field {row['field']}: {row['message']} in {row['line'][:200]!r}"
    return None
