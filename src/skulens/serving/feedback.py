"""The service's side of the loop: what it records and what it reads back.

* :class:`ServiceEvents` gives every search and recommendation a ``search_id`` and queues its
  search record (query, variant, versions, ranked products with their per-stage scores, latency,
  fallbacks); it takes the client events of ``POST /events`` (validated by the events contract,
  :func:`skulens.streaming.records.check_client_event`) and queues them too. Nothing is written
  in the request path: the :class:`~skulens.streaming.landing.EventLog` thread does it.
* the online features come back through the :class:`~skulens.streaming.online.FeatureCache` the
  state hands every pipeline (:func:`skulens.serving.pipeline.add_features`).

Duplicate event ids are answered as duplicates by the worker that saw the first copy (a window of
recent ids per worker); the stream job removes duplicates exactly, whichever worker took them.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from skulens.serving.pipeline import RequestError
from skulens.streaming.records import EventError, check_client_event, search_record

MAX_EVENTS_PER_REQUEST = 100


class ServiceEvents:
    def __init__(self, log: Any, metrics: Any, *, catalog: str | None = None, seen_size: int = 100_000,
                 max_age: timedelta = timedelta(days=7)) -> None:
        self.log, self.metrics, self.seen_size, self.max_age = log, metrics, seen_size, max_age
        self.catalog = catalog
        self.on_click: Any = None  # on_click(search_id, position) for an accepted click (online CTR)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any, metrics: Any, catalog: str | None = None) -> ServiceEvents:
        """The event log ``stream`` configures: rotated files in ``stream.files_dir`` or Kafka."""
        from skulens.storage.layout import stream_paths
        from skulens.streaming.landing import EventLog, FileSink, KafkaSink

        config = settings.stream
        if config.backend == "kafka":
            assert config.kafka is not None
            sink: Any = KafkaSink(config.kafka.bootstrap_servers, config.kafka.events_topic,
                                  on_error=lambda n: metrics.events_dropped.labels(reason="write_error").inc(n))
        else:
            sink = FileSink(stream_paths(settings).landing, config.rotate_s, config.rotate_bytes)
        log = EventLog(sink, max_queue=config.queue_size,
                       on_drop=lambda reason, n: metrics.events_dropped.labels(reason=reason).inc(n),
                       on_write=metrics.events_logged.inc)
        return cls(log, metrics, catalog=catalog, max_age=timedelta(days=config.max_event_age_days))

    def record_search(self, endpoint: str, body: dict[str, Any], *, query_raw: str | None, user_id: str | None,
                      session_id: str | None, latency_ms: float) -> str:
        """Give ``body`` its ``search_id`` and queue its search record (never blocks). The id ends in
        ``.<variant>`` so that a click on it counts for its variant in whichever worker receives it."""
        variant = body.get("variant")
        suffix = body.pop("_id_suffix", None)  # an interleaved page: which positions each arm placed
        search_id = uuid.uuid4().hex + (suffix or (f".{variant}" if isinstance(variant, str) and variant else ""))
        body["search_id"] = search_id
        if self.log is not None:
            self.log.offer(search_record(search_id, endpoint, body, query_raw=query_raw, user_id=user_id,
                                         session_id=session_id, latency_ms=latency_ms, ts=datetime.now(UTC),
                                         catalog=self.catalog))
            self.metrics.events_backlog.set(self.log.backlog)
        return search_id

    def accept(self, raw: Any) -> dict[str, Any]:
        """``POST /events``: one event object or ``{"events": [...]}`` (at most 100). Every event is
        checked before any is queued: one bad event is a 400 naming it, its field and the rule."""
        events = raw.get("events") if isinstance(raw, dict) and "events" in raw else [raw]
        if isinstance(raw, dict) and "events" in raw and set(raw) != {"events"}:
            raise RequestError(f"unknown field(s) {', '.join(sorted(set(raw) - {'events'}))} beside events")
        if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS_PER_REQUEST:
            raise RequestError(f"events must be a list of 1 to {MAX_EVENTS_PER_REQUEST} events")
        now = datetime.now(UTC)
        checked = []
        for number, event in enumerate(events):
            try:
                checked.append(check_client_event(event, now=now, max_age=self.max_age))
            except EventError as exc:
                where = f"events[{number}]." if len(events) > 1 or "events" in raw else ""
                raise RequestError(f"{where}{exc.field}: {exc.message} (rule {exc.rule})") from exc
        accepted, duplicates = [], []
        for event in checked:
            if self._first_time(event.event_id):
                accepted.append(event.event_id)
                if self.log is not None:
                    self.log.offer(event.record())
                self.metrics.client_events.labels(type=event.kind, outcome="accepted").inc()
                if event.kind == "click" and self.on_click is not None and "." in (event.search_id or ""):
                    self.on_click(event.search_id, event.position)
            else:
                duplicates.append(event.event_id)
                self.metrics.client_events.labels(type=event.kind, outcome="duplicate").inc()
        return {"accepted": len(accepted), "duplicates": duplicates}

    def _first_time(self, event_id: str) -> bool:
        with self._lock:
            if event_id in self._seen:
                return False
            self._seen[event_id] = None
            if len(self._seen) > self.seen_size:
                self._seen.popitem(last=False)
            return True

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

