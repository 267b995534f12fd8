"""Getting events out of the request path: a bounded queue and a writer thread per worker.

A request only enqueues (:meth:`EventLog.offer`, a ``put_nowait``): when the queue is full the
record is dropped and counted (``skulens_events_dropped_total{reason="queue_full"}``) rather than
slowing a search. The writer thread appends the records to a sink:

* :class:`FileSink` (the default): JSON lines in ``stream.files_dir``. Each file is written under a
  hidden name (``.events-...jsonl.part``, which Spark's file source ignores) and renamed to
  ``events-<pid>-<time>-<seq>.jsonl`` when it rotates, so the stream job never reads half a file;
  it rotates every ``rotate_s`` seconds or ``rotate_bytes`` bytes, whichever comes first.
* :class:`KafkaSink` (``stream.backend: kafka``): one message per record on the events topic,
  keyed by search id. Its client (confluent-kafka) is not installed by default and no broker runs
  here, so this sink is untested; see the README.

A sink that fails (a full disk, an unwritable folder, a broker down) loses the records of that
write, counts them (``reason="write_error"``) and keeps the service running; the next write tries
again. :meth:`EventLog.close` drains the queue and closes the current file on graceful shutdown.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

_STOP = object()


class Sink(Protocol):
    def write(self, lines: list[str]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class FileSink:
    """JSON lines, rotated into ``folder`` by an atomic rename."""

    def __init__(self, folder: Path, rotate_s: float = 2.0, rotate_bytes: int = 8 << 20) -> None:
        self.folder, self.rotate_s, self.rotate_bytes = Path(folder), rotate_s, rotate_bytes
        self._file: Any = None
        self._part: Path | None = None
        self._opened = 0.0
        self._size = 0
        self._seq = 0
        self.files_written = 0

    def write(self, lines: list[str]) -> None:
        if self._file is None:
            self._open()
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        try:
            self._file.write(data)
            self._file.flush()
        except OSError:
            self._undo(self._size)
            raise
        self._size += len(data)
        if self._size >= self.rotate_bytes:
            self.rotate()

    def flush(self) -> None:
        """Rotate when the current file is older than ``rotate_s`` (called when the queue is idle)."""
        if self._file is not None and time.monotonic() - self._opened >= self.rotate_s:
            self.rotate()

    def rotate(self) -> None:
        """Close the current file and publish it under its final name."""
        if self._file is None:
            return
        file, part = self._file, self._part
        self._file, self._part = None, None
        try:
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()
        assert part is not None
        os.replace(part, part.with_name(part.name[1:].removesuffix(".part")))
        self.files_written += 1

    def close(self) -> None:
        self.rotate()

    def _undo(self, size: int) -> None:
        """Cut a failed write off the file (a full disk leaves part of it); when even that fails,
        start a new file: a half line left behind reaches the dead-letter table (rule json)."""
        try:
            self._file.truncate(size)
            self._file.seek(size)
        except OSError:
            try:
                self.rotate()
            except OSError:  # the folder itself is gone or read-only: the next write opens anew
                self._file, self._part = None, None

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f".events-{os.getpid()}-{time.time_ns() // 1000}-{self._seq:06d}.jsonl.part"
        self._part = self.folder / name
        self._file = open(self._part, "ab")  # noqa: SIM115 - held open across writes until rotation
        self._opened, self._size = time.monotonic(), 0


class KafkaSink:
    """One message per record on ``topic`` (confluent-kafka's producer; delivery errors counted)."""

    def __init__(self, bootstrap_servers: str, topic: str, on_error: Callable[[int], None] | None = None) -> None:
        try:
            from confluent_kafka import Producer  # type: ignore[import-not-found]
        except ImportError as exc:
            raise RuntimeError("stream.backend is kafka but confluent-kafka is not installed "
                               "(pip install confluent-kafka)") from exc
        self.topic, self.on_error = topic, on_error
        self._producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 20,
                                   "enable.idempotence": True, "compression.type": "lz4"})

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None and self.on_error is not None:
            self.on_error(1)

    def write(self, lines: list[str]) -> None:
        for line in lines:
            key = json.loads(line).get("search_id") or ""
            self._producer.produce(self.topic, line.encode(), key=key.encode(), on_delivery=self._delivered)
        self._producer.poll(0)

    def flush(self) -> None:
        self._producer.poll(0)

    def close(self) -> None:
        self._producer.flush(10)


class EventLog:
    """A bounded queue of records and the thread that writes them to ``sink``.

    ``on_drop(reason, n)`` counts records that never reached the sink (``queue_full``,
    ``write_error``, ``unserialisable``); ``on_write(n)`` counts records written."""

    def __init__(self, sink: Sink, *, max_queue: int = 10_000, max_batch: int = 500, idle_s: float = 0.2,
                 on_drop: Callable[[str, int], None] | None = None,
                 on_write: Callable[[int], None] | None = None) -> None:
        self.sink, self.max_batch, self.idle_s = sink, max_batch, idle_s
        self.on_drop = on_drop or (lambda reason, n: None)
        self.on_write = on_write or (lambda n: None)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self.dropped: dict[str, int] = {}
        self.written = 0
        self.last_error: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="skulens-event-writer", daemon=True)
        self._thread.start()

    def offer(self, record: dict[str, Any]) -> bool:
        """Enqueue ``record`` (never blocks); False when it was dropped."""
        if self._closed:
            self._drop("closed", 1)
            return False
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            self._drop("queue_full", 1)
            return False

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, close the sink's current file, stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def _drop(self, reason: str, n: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n
        self.on_drop(reason, n)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=self.idle_s)
            except queue.Empty:
                self._guard(self.sink.flush, 0)
                continue
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = any(item is _STOP for item in batch)
            lines = []
            for record in batch:
                if record is _STOP:
                    continue
                try:
                    lines.append(json.dumps(record, separators=(",", ":"), default=str, allow_nan=False))
                except (TypeError, ValueError):
                    self._drop("unserialisable", 1)
            if lines and self._guard(lambda lines=lines: self.sink.write(lines), len(lines)):
                self.written += len(lines)
                self.on_write(len(lines))
            self._guard(self.sink.flush, 0)
        self._guard(self.sink.close, 0)

    def _guard(self, action: Callable[[], None], n: int) -> bool:
        """Run a sink call; a failure drops ``n`` records (counted) and never ends the thread."""
        try:
            action()
            return True
        except Exception as exc:  # noqa: BLE001 - a full disk or a dead broker must not stop the writer
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if n:
                self._drop("write_error", n)
            return False

