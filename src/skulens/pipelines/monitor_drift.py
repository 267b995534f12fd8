"""``monitor_drift``: compare the current window of searches, outcomes and catalogue with the
reference window (Evidently, :mod:`skulens.quality.drift`); a drift decision asks for retraining.

Windows: current = the last ``monitoring.drift.current_hours``; reference = the
``reference_days`` before it, but never before the last drift decision (after a retrain is asked
for, the shifted traffic is the new normal: one shift triggers once), and no decision until that
reference spans at least one current window. Every run appends its
decision to ``SKULENS_HOME/reports/drift/decisions.jsonl`` and writes its reports under
``reports/drift/<run_id>/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skulens.quality.drift import CheckResult, catalog_frame, compare, embedding_frames, outcome_frame, query_frame


def drift_dir(settings: Any) -> Path:
    return settings.reports_dir / "drift"


def with_windows(settings: Any, current_hours: float | None = None, reference_days: float | None = None) -> Any:
    """``settings`` with the drift windows overridden where a value is given (DAG params, CLI)."""
    update = {key: value for key, value in (("current_hours", current_hours), ("reference_days", reference_days))
              if value is not None}
    if not update:
        return settings
    drift = settings.monitoring.drift.model_copy(update=update)
    return settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update={"drift": drift})})


def last_trigger(settings: Any) -> datetime | None:
    """When the last drift decision asked for retraining (the reference starts there)."""
    path = drift_dir(settings) / "decisions.jsonl"
    if not path.is_file():
        return None
    triggers = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    triggers = [d for d in triggers if d.get("triggered")]
    return datetime.fromisoformat(triggers[-1]["now"]) if triggers else None


def read_events(settings: Any, since: datetime) -> pd.DataFrame:
    """Searches and clicks of the stream job's events table since ``since``."""
    import duckdb

    from skulens.storage.layout import stream_paths

    folder = stream_paths(settings).events
    columns = ["search_id", "ts", "event_type", "query", "results", "variant"]
    if not any(folder.rglob("*.parquet")):
        return pd.DataFrame(columns=columns)
    with duckdb.connect() as db:
        # Cast: the stream job writes microsecond timestamps, other writers nanoseconds.
        frame = db.execute(f"select {', '.join(columns)} from read_parquet(?, hive_partitioning = true, "
                           "union_by_name = true) where cast(ts as timestamptz) >= ? "
                           "and event_type in ('search', 'click')", [str(folder / "**" / "*.parquet"), since]).df()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def monitor_drift(settings: Any, run_id: str, *, now: datetime | None = None, events: pd.DataFrame | None = None,
                  encode: Callable[[list[str]], np.ndarray] | None = None,
                  vocabulary: set[str] | None = None) -> dict[str, Any]:
    """Run every enabled check; the decision (``triggered``: retrain) with its reasons and reports."""
    config = settings.monitoring.drift
    now = now or datetime.now(UTC)
    current_from = now - timedelta(hours=config.current_hours)
    reference_from = current_from - timedelta(days=config.reference_days)
    baseline = last_trigger(settings)
    if baseline is not None and baseline > reference_from:
        reference_from = baseline
    events = read_events(settings, reference_from) if events is None else events
    events = events[(events["ts"] >= reference_from) & (events["ts"] < now)]
    searches = events[events["event_type"] == "search"]
    reference, current = searches[searches["ts"] < current_from], searches[searches["ts"] >= current_from]
    folder = drift_dir(settings) / run_id
    checks: list[CheckResult] = []
    enabled = {name: check for name, check in config.checks.items() if check.enabled}
    enough = len(reference) >= config.min_rows and len(current) >= config.min_rows
    why_not = None if enough else (f"{len(reference)} reference and {len(current)} current searches "
                                   f"(need {config.min_rows} each)")
    if why_not is None and current_from - reference_from < timedelta(hours=config.current_hours):
        # Just after a decision the reference is short and noisy: wait until it spans a window.
        why_not = (f"the reference since the last drift decision spans {current_from - reference_from}, "
                   f"less than the {config.current_hours:g} h current window")
    previous, published = _catalogue_versions(settings)
    if "query_text" in enabled:
        words = vocabulary or _vocabulary(published, reference)
        checks.append(_run("query_text", enabled, folder, why_not,
                           lambda: (query_frame(reference, words), query_frame(current, words))))
    if "query_embeddings" in enabled:
        encoder = encode or (None if why_not else _encoder(settings))
        no_encoder = None if encoder else "no served query encoder (no published index)"
        checks.append(_run("query_embeddings", enabled, folder, why_not or no_encoder, lambda: embedding_frames(
            encoder(reference["query"].fillna("").tolist()), encoder(current["query"].fillna("").tolist()))))
    if "outcomes" in enabled:
        clicks = events[events["event_type"] == "click"].groupby("search_id").size()
        for variant in sorted(set(reference["variant"].dropna()) & set(current["variant"].dropna())):
            ref_v, cur_v = reference[reference["variant"] == variant], current[current["variant"] == variant]
            short = None if min(len(ref_v), len(cur_v)) >= config.min_rows else f"few searches of {variant}"
            checks.append(_run("outcomes", enabled, folder, why_not or short,
                               lambda r=ref_v, c=cur_v: (outcome_frame(r, clicks), outcome_frame(c, clicks)),
                               label=f"outcomes:{variant}"))
    if "catalog" in enabled:
        checks.append(_run("catalog", enabled, folder, None if published is not None and previous is not None
                           else "no previous published catalogue version",
                           lambda: (catalog_frame(previous), catalog_frame(published)), categorical=("category",)))
    drifted = [c for c in checks if c.drifted]
    decision = {"run_id": run_id, "now": now.isoformat(), "triggered": bool(drifted),
                "reasons": [f"{c.name}: " + ", ".join(f"{col['column']} {col['method']} {col['score']} "
                                                      f"(threshold {col['threshold']})"
                                                      for col in c.columns if col["drifted"]) for c in drifted],
                "reference": [reference_from.isoformat(), current_from.isoformat()],
                "current": [current_from.isoformat(), now.isoformat()],
                "checks": [c.to_dict() for c in checks]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "decision.json").write_text(json.dumps(decision, indent=2, default=str), encoding="utf-8")
    with (drift_dir(settings) / "decisions.jsonl").open("a", encoding="utf-8") as log:
        log.write(json.dumps({k: decision[k] for k in ("run_id", "now", "triggered", "reasons")}) + "\n")
    _share(settings, decision)
    return decision


def _share(settings: Any, decision: dict[str, Any]) -> None:
    """The decision per check in the control store, where every serving worker exposes it as the
    ``skulens_drift_drifted`` gauge (Grafana's drift row, docs/operations.md). Best effort: an
    unreachable store must not fail the monitoring run that already wrote its reports."""
    from skulens.control.routing import DRIFT
    from skulens.control.store import Conflict, ControlStoreError, open_control

    doc = {"run_id": decision["run_id"], "now": decision["now"], "triggered": decision["triggered"],
           "checks": {c["name"]: bool(c.get("drifted")) for c in decision["checks"] if not c.get("skipped")}}
    try:
        store = open_control(settings)
        try:
            for _ in range(3):
                _, revision = store.read(DRIFT)
                try:
                    store.write(DRIFT, doc, expect=revision)
                    return
                except Conflict:
                    continue
        finally:
            store.close()
    except ControlStoreError:
        return


def _run(name: str, enabled: dict[str, Any], folder: Path, skipped: str | None,
         frames: Callable[[], tuple[pd.DataFrame, pd.DataFrame]], label: str | None = None,
         categorical: tuple[str, ...] = ()) -> CheckResult:
    if skipped:
        return CheckResult(label or name, skipped=skipped)
    reference, current = frames()
    check = enabled[name]
    return compare(label or name, reference, current, method=check.method, threshold=check.threshold,
                   folder=folder, categorical=categorical)


def _vocabulary(published: pd.DataFrame | None, reference: pd.DataFrame) -> set[str]:
    """The catalogue's title words (the published index's products), else the reference queries'."""
    texts = published["title"] if published is not None else reference["query"]
    return {w for text in texts.fillna("") for w in str(text).lower().split()}


def _catalogue_versions(settings: Any) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Products of the previous and the published index version (None where there is none)."""
    from skulens.storage.layout import index_store

    store = index_store(settings, settings.retrieval.catalog)
    current = store.current_id()
    if current is None:
        return None, None
    older = [v for v in store.list_versions() if v < current]

    def products(version: str) -> pd.DataFrame | None:
        path = store.local(version) / "products.parquet"
        return pd.read_parquet(path) if path.is_file() else None
    return (products(older[-1]) if older else None), products(current)


def _encoder(settings: Any) -> Callable[[list[str]], np.ndarray] | None:
    """The served query encoder (the embedder that built the published index), or None."""
    from skulens.storage.layout import index_store

    if index_store(settings, settings.retrieval.catalog).current_id() is None:
        return None
    from skulens.serving.loader import load_served

    served = load_served(settings)
    return lambda texts: np.asarray(served.pipeline.encoder.encode_texts(texts))
