"""The events contract of the service: what the landing zone holds and how each record is checked.

Two kinds of record travel from the service to the stream job, one JSON object per line:

* a **search record** (``kind: "search"``), written by the service for every ``/search`` and
  ``/recommend/*`` response: the search id, the query as typed and as searched, the variant and the
  model/index/ranker versions, the ranked product ids with their positions and per-stage scores,
  the user and session ids when given, the latency and the fallbacks;
* a **client event** (``kind`` one of :data:`CLIENT_KINDS`), sent by the page or the shop's client
  to ``POST /events``: event id, search id, product id, position and time.

:func:`check_client_event` is the one implementation of the client-event rules: ``POST /events``
answers its :class:`EventError` as a 400 naming the field and rule, and the stream job sends a row
breaking it to the dead-letter table with the same rule. :func:`flatten` turns a landed line into
rows of the events table (one ``search`` row, one ``impression`` row per shown product, or one
client-event row), or into a dead-letter row naming the rule.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

CLIENT_KINDS = ("click", "add_to_cart", "purchase")
EVENT_TYPES = ("search", "impression", *CLIENT_KINDS)
MAX_LINE_BYTES = 256 * 1024     # a search record with 100 items and their scores is about 20 KB
MAX_FUTURE = timedelta(minutes=5)  # clocks drift; an event further ahead is a client bug
MAX_POSITION = 5000             # 100 per page x 50 pages
_ID = re.compile(r"^[A-Za-z0-9_.:@#/-]{1,128}$")

# Columns of the events table, in order (see skulens.data.contracts.STREAM_EVENTS for their docs).
EVENT_COLUMNS = ("event_id", "search_id", "ts", "event_type", "catalog", "product_id", "position", "query",
                 "query_raw", "user_id", "session_id", "endpoint", "variant", "versions", "scores",
                 "results", "latency_ms", "fallbacks", "exploration", "orphaned", "received_at")
DEAD_COLUMNS = ("line", "rule", "field", "message", "received_at")


class EventError(ValueError):
    """An event that breaks the contract: ``field`` and ``rule`` say which and how."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(f"{field}: {message} (rule {rule})")
        self.field, self.rule, self.message = field, rule, message


@dataclass(frozen=True)
class ClientEvent:
    event_id: str
    kind: str
    product_id: str
    ts: datetime
    search_id: str | None = None
    position: int | None = None
    user_id: str | None = None
    session_id: str | None = None

    def record(self) -> dict[str, Any]:
        """The landing-zone line of this event."""
        return {"kind": self.kind, "event_id": self.event_id, "search_id": self.search_id,
                "product_id": self.product_id, "position": self.position, "ts": iso(self.ts),
                "user_id": self.user_id, "session_id": self.session_id}


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(value: Any, field: str = "ts") -> datetime:
    """An ISO 8601 time with a zone (``2026-12-02T10:00:00Z``) or epoch milliseconds, as UTC."""
    if isinstance(value, bool) or value is None:
        raise EventError(field, "type:time", "must be an ISO 8601 time with a zone or epoch milliseconds")
    if isinstance(value, (int, float)):
        if not 0 < value < 1e14:
            raise EventError(field, "range", f"epoch milliseconds {value!r} out of range")
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    if not isinstance(value, str) or len(value) > 40:
        raise EventError(field, "type:time", "must be an ISO 8601 time with a zone or epoch milliseconds")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise EventError(field, "type:time", f"{value[:40]!r} is not an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        raise EventError(field, "time_zone", f"{value!r} has no time zone; send UTC with a Z")
    return parsed.astimezone(UTC)


def _identifier(raw: dict[str, Any], field: str, *, required: bool) -> str | None:
    value = raw.get(field)
    if value is None:
        if required:
            raise EventError(field, "required", "is required")
        return None
    if not isinstance(value, str) or not _ID.match(value):
        raise EventError(field, "format", "must be 1-128 letters, digits or _.:@#/-")
    return value


def check_client_event(raw: Any, now: datetime | None = None, max_age: timedelta = timedelta(days=7)
                       ) -> ClientEvent:
    """The client event ``raw`` (a decoded JSON object), or EventError naming the field and rule.

    Rules: ``type`` one of click, add_to_cart, purchase; ``event_id`` and ``product_id`` required;
    ``search_id`` required for a click (a cart or purchase may happen outside search);
    ``position`` an integer from 1; ``ts`` a time with a zone, not in the future (beyond clock
    drift) and not older than ``max_age``; ``user_id`` and ``session_id`` optional; nothing else."""
    if not isinstance(raw, dict):
        raise EventError("event", "type:object", "each event must be a JSON object")
    unknown = sorted(set(raw) - {"event_id", "type", "kind", "search_id", "product_id", "position", "ts",
                                 "user_id", "session_id"})
    if unknown:
        raise EventError(unknown[0], "unknown_field", f"unknown field(s) {', '.join(unknown)}")
    kind = raw.get("type", raw.get("kind"))
    if kind not in CLIENT_KINDS:
        raise EventError("type", "one_of", f"must be one of {', '.join(CLIENT_KINDS)}, got {str(kind)[:40]!r}")
    event_id = _identifier(raw, "event_id", required=True)
    product_id = _identifier(raw, "product_id", required=True)
    search_id = _identifier(raw, "search_id", required=kind == "click")
    position = raw.get("position")
    if position is not None and (isinstance(position, bool) or not isinstance(position, int)
                                 or not 1 <= position <= MAX_POSITION):
        raise EventError("position", "range", f"must be an integer from 1 to {MAX_POSITION}, got {position!r}")
    now = now or datetime.now(UTC)
    ts = parse_time(raw.get("ts", iso(now)))
    if ts > now + MAX_FUTURE:
        raise EventError("ts", "future", f"{iso(ts)} is in the future (server time {iso(now)})")
    if ts < now - max_age:
        raise EventError("ts", "too_old", f"{iso(ts)} is older than {max_age.days} days")
    ids = {name: _identifier(raw, name, required=False) for name in ("user_id", "session_id")}
    return ClientEvent(event_id, kind, product_id, ts, search_id, position, ids["user_id"], ids["session_id"])


def search_record(search_id: str, endpoint: str, body: dict[str, Any], *, query_raw: str | None,
                  user_id: str | None, session_id: str | None, latency_ms: float, ts: datetime,
                  catalog: str | None = None) -> dict[str, Any]:
    """The landing-zone line of one answered search (or recommendation) ``body``."""
    items = [{"product_id": item["product_id"], "position": position,
              "scores": item.get("scores") or ({"score": item["score"]} if item.get("score") is not None else {})}
             for position, item in enumerate(body.get("items", ()), start=1)]
    return {"kind": "search", "search_id": search_id, "ts": iso(ts), "endpoint": endpoint, "catalog": catalog,
            "query_raw": query_raw, "query": body.get("query"), "variant": body.get("variant"),
            "versions": body.get("versions") or {}, "user_id": user_id, "session_id": session_id,
            "items": items, "latency_ms": round(latency_ms, 3), "fallbacks": body.get("fallbacks") or [],
            "exploration": body.get("exploration"), "source": body.get("source")}


def _dead(line: str, error: EventError, received_at: datetime) -> dict[str, Any]:
    return {"line": line[:4096], "rule": error.rule, "field": error.field, "message": error.message[:500],
            "received_at": received_at}


def flatten(line: str, received_at: datetime, max_age: timedelta = timedelta(days=7)
            ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(events-table rows, None) for a good landed line, ([], a dead-letter row) for a bad one.

    ``received_at`` is the time the stream job read the line: the age rule counts from it, so that
    a replay of the same batch after a crash decides exactly as the first run did."""
    try:
        if len(line.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
            raise EventError("line", "oversized", f"a landed line may hold at most {MAX_LINE_BYTES:,} bytes")
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise EventError("line", "json", f"not valid JSON: {str(exc)[:100]}") from exc
        if not isinstance(raw, dict):
            raise EventError("line", "type:object", "a landed line must be a JSON object")
        if raw.get("kind") == "search":
            return _search_rows(raw, received_at), None
        event = check_client_event(raw, now=received_at, max_age=max_age)
        return [_row(event.event_id, event.search_id, event.ts, event.kind, event.product_id, event.position,
                     user_id=event.user_id, session_id=event.session_id, received_at=received_at)], None
    except EventError as error:
        return [], _dead(line, error, received_at)


def _row(event_id: str, search_id: str | None, ts: datetime, event_type: str, product_id: str | None,
         position: int | None, **rest: Any) -> dict[str, Any]:
    row = dict.fromkeys(EVENT_COLUMNS)
    row.update(event_id=event_id, search_id=search_id, ts=ts, event_type=event_type, product_id=product_id,
               position=position, orphaned=False, **rest)
    return row


def _search_rows(raw: dict[str, Any], received_at: datetime) -> list[dict[str, Any]]:
    """A ``search`` row for the search itself (results count, latency) and an ``impression`` row per
    shown product, each keyed ``<search_id>:<position>`` so that a replayed line is one row."""
    search_id = _identifier(raw, "search_id", required=True)
    ts = parse_time(raw.get("ts"))
    items = raw.get("items")
    if not isinstance(items, list):
        raise EventError("items", "type:list", "a search record lists its items")
    shared = {"query": _text(raw.get("query")), "query_raw": _text(raw.get("query_raw")),
              "catalog": _text(raw.get("catalog"), 128), "exploration": _text(raw.get("exploration"), 64),
              "user_id": _identifier(raw, "user_id", required=False),
              "session_id": _identifier(raw, "session_id", required=False),
              "endpoint": _text(raw.get("endpoint")), "variant": _text(raw.get("variant")),
              "versions": json.dumps(raw.get("versions") or {}, sort_keys=True), "received_at": received_at}
    fallbacks = raw.get("fallbacks") or []
    latency = raw.get("latency_ms")
    rows = [_row(search_id, search_id, ts, "search", None, None, results=len(items),
                 latency_ms=float(latency) if isinstance(latency, (int, float)) else None,
                 fallbacks=",".join(str(f) for f in fallbacks) if isinstance(fallbacks, list) else None, **shared)]
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("product_id"), str):
            raise EventError("items", "item", "each item has a product_id")
        position = item.get("position")
        if isinstance(position, bool) or not isinstance(position, int) or position < 1:
            raise EventError("items.position", "range", "item positions are integers from 1")
        rows.append(_row(f"{search_id}:{position}", search_id, ts, "impression", item["product_id"][:256],
                         position, scores=json.dumps(item.get("scores") or {}, sort_keys=True), **shared))
    return rows


def _text(value: Any, limit: int = 512) -> str | None:
    return value[:limit] if isinstance(value, str) else None
