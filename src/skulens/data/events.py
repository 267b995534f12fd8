"""Validate click logs (``events``) from a user's files: CSV, Parquet or JSONL.

Rules: event_id required and unique; ts a valid time; user_id, session_id, product_id required;
event_type one of impression, click, add_to_cart, purchase; position, when given, an integer >= 1;
a session belongs to one user (rule ``session_user``). Events are sorted by session and time on
output, so downstream jobs can rely on the order within a session.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from skulens.data.checks import CheckResult, RecordChecker, blank
from skulens.data.contracts import CONTRACTS, EVENT_TYPES
from skulens.data.sources import SourceError, read_records

REQUIRED = ("event_id", "ts", "user_id", "session_id", "product_id", "event_type")
OPTIONAL = ("query", "position", "experiment", "variant")


def load_events(path: Path, fmt: str | None = None) -> tuple[pa.Table, CheckResult]:
    """Read and validate an events file whose columns carry the canonical names."""
    raw = read_records(Path(path), fmt)
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise SourceError(f"{path}: events columns missing: {', '.join(missing)}")
    frame = raw.frame.copy()
    for column in OPTIONAL:
        if column not in frame:
            frame[column] = ""
    checker = RecordChecker(frame, "events", str(path), key_field="event_id")
    checker.add_rejects(raw.malformed)
    for column in REQUIRED:
        checker.require(column)
    checker.unique(["event_id"])
    checker.one_of("event_type", EVENT_TYPES)
    ts = checker.parse_timestamp("ts")
    position = checker.parse_float("position", minimum=1)
    fractional = position.notna().to_numpy() & (position.fillna(0) % 1 != 0).to_numpy()
    checker.reject(fractional, "position", "type:int", "position must be a whole number")
    alive = checker.alive
    owners = frame.loc[alive].groupby("session_id")["user_id"].nunique()
    shared = frame["session_id"].isin(owners[owners > 1].index).to_numpy()
    checker.reject(shared, "session_id", "session_user", "a session must belong to one user")

    result = checker.result()
    alive = checker.alive
    kept = frame.loc[alive].assign(ts=ts[alive], position=position[alive])
    kept = kept.sort_values(["session_id", "ts", "event_id"], kind="stable")
    table = pa.table({
        "event_id": kept["event_id"].tolist(),
        "ts": pa.array(kept["ts"].dt.tz_convert("UTC").to_numpy(dtype="datetime64[us]"),
                       type=pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
        "user_id": kept["user_id"].tolist(),
        "session_id": kept["session_id"].tolist(),
        "query": [None if b else q for q, b in zip(kept["query"], blank(kept["query"]), strict=True)],
        "product_id": kept["product_id"].tolist(),
        "event_type": kept["event_type"].tolist(),
        "position": pa.array(kept["position"].to_numpy(), type=pa.float64(), from_pandas=True)
        .cast(pa.int32()),
        "experiment": [v or None for v in kept["experiment"]],
        "variant": [v or None for v in kept["variant"]],
    })
    return CONTRACTS["events"].conform(table), result


def ordered_within_session(frame: pd.DataFrame) -> pd.Series:
    """Per event: True unless its time is earlier than the previous event of its session (row order)."""
    previous = frame.groupby("session_id", sort=False)["ts"].shift()
    return previous.isna() | (frame["ts"] >= previous)


def sessions_ordered(table: pa.Table) -> bool:
    """True when event times never go backwards within a session (in table order)."""
    return bool(ordered_within_session(table.select(["session_id", "ts"]).to_pandas()).all())

