"""The shared control store: what all serving workers and replicas read and write together.

Three kinds of state, each with an operation that is safe when several processes use it at once:

* **documents** (the routing: variants, traffic, experiments) with a revision number; a write can
  name the revision it read (compare-and-set) so that two admins cannot overwrite each other;
* **counters** (LLM spend per day, per-variant request statistics of a canary step), added to
  atomically, never read-modify-written by a worker;
* **records** (the rollout log), appended.

Backends register by name in :data:`CONTROL_STORES`, picked by ``serving.shared.backend``:
``sqlite`` (default: one file under ``SKULENS_HOME``, shared by the workers of one machine) and
``redis`` (production: shared by replicas on several machines).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from skulens.storage.layout import control_db
from skulens.storage.sqlite import thread_connection


class ControlStoreError(RuntimeError):
    """The control store cannot be reached or read."""


class Conflict(RuntimeError):
    """A compare-and-set write lost: the document changed since it was read."""


class ControlStore(Protocol):
    def read(self, name: str) -> tuple[dict[str, Any] | None, int]: ...
    def write(self, name: str, doc: Mapping[str, Any], expect: int | None = None) -> int: ...
    def add(self, key: str, fields: Mapping[str, float]) -> None: ...
    def totals(self, key: str) -> dict[str, float]: ...
    def append(self, log: str, record: Mapping[str, Any]) -> None: ...
    def records(self, log: str) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


class SQLiteControl:
    """The control store in one SQLite file (WAL: readers never wait for the writer)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._guard():
            db = self._db()
            db.execute("create table if not exists docs (name text primary key, value text not null, "
                       "revision integer not null)")
            db.execute("create table if not exists counters (key text not null, field text not null, "
                       "value real not null, primary key (key, field))")
            db.execute("create table if not exists records (seq integer primary key autoincrement, "
                       "log text not null, value text not null, at real not null)")

    def _db(self) -> sqlite3.Connection:
        return thread_connection(self._local, self.path, 10.0)

    def _guard(self) -> _Guard:
        return _Guard(self.path)

    def read(self, name: str) -> tuple[dict[str, Any] | None, int]:
        with self._guard():
            row = self._db().execute("select value, revision from docs where name = ?", (name,)).fetchone()
        return (None, 0) if row is None else (json.loads(row[0]), int(row[1]))

    def write(self, name: str, doc: Mapping[str, Any], expect: int | None = None) -> int:
        with self._guard():
            db = self._db()
            db.execute("begin immediate")
            try:
                row = db.execute("select revision from docs where name = ?", (name,)).fetchone()
                revision = 0 if row is None else int(row[0])
                if expect is not None and expect != revision:
                    raise Conflict(f"{name} changed (revision {revision}, expected {expect}); read it again")
                db.execute("insert into docs (name, value, revision) values (?, ?, ?) on conflict(name) do update "
                           "set value = excluded.value, revision = excluded.revision",
                           (name, json.dumps(doc, sort_keys=True), revision + 1))
                db.execute("commit")
            except BaseException:
                db.execute("rollback")
                raise
        return revision + 1

    def add(self, key: str, fields: Mapping[str, float]) -> None:
        if not fields:
            return
        with self._guard():
            db = self._db()
            db.execute("begin immediate")
            try:
                db.executemany("insert into counters (key, field, value) values (?, ?, ?) on conflict(key, field) "
                               "do update set value = value + excluded.value",
                               [(key, field, float(value)) for field, value in fields.items()])
                db.execute("commit")
            except BaseException:
                db.execute("rollback")
                raise

    def totals(self, key: str) -> dict[str, float]:
        with self._guard():
            rows = self._db().execute("select field, value from counters where key = ?", (key,)).fetchall()
        return {field: value for field, value in rows}

    def append(self, log: str, record: Mapping[str, Any]) -> None:
        with self._guard():
            self._db().execute("insert into records (log, value, at) values (?, ?, ?)",
                               (log, json.dumps(record, sort_keys=True, default=str), time.time()))

    def records(self, log: str) -> list[dict[str, Any]]:
        with self._guard():
            rows = self._db().execute("select value from records where log = ? order by seq", (log,)).fetchall()
        return [json.loads(value) for (value,) in rows]

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class _Guard:
    """Turns SQLite's errors into :class:`ControlStoreError` naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if isinstance(exc, sqlite3.Error):
            raise ControlStoreError(f"control store {self.path}: {exc}") from exc
        return False


class RedisControl:
    """The control store in Redis: documents as hashes (value, revision) written under WATCH,
    counters as hashes added to with HINCRBYFLOAT, records as lists."""

    def __init__(self, url: str, prefix: str = "skulens:control:") -> None:
        import redis

        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError,)
        self._watch_error = redis.WatchError

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self._errors as exc:
            if isinstance(exc, self._watch_error):
                raise Conflict("the document changed while it was written; read it again") from exc
            raise ControlStoreError(f"control store (redis): {exc}") from exc

    def read(self, name: str) -> tuple[dict[str, Any] | None, int]:
        raw = self._call(lambda: self.client.hmget(self.prefix + "doc:" + name, "value", "revision"))
        if raw[0] is None:
            return None, 0
        return json.loads(raw[0]), int(raw[1])

    def write(self, name: str, doc: Mapping[str, Any], expect: int | None = None) -> int:
        key = self.prefix + "doc:" + name
        value = json.dumps(doc, sort_keys=True)

        def transaction() -> int:
            with self.client.pipeline() as pipe:
                pipe.watch(key)
                current = pipe.hget(key, "revision")
                revision = int(current or 0)
                if expect is not None and expect != revision:
                    pipe.unwatch()
                    raise Conflict(f"{name} changed (revision {revision}, expected {expect}); read it again")
                pipe.multi()
                pipe.hset(key, mapping={"value": value, "revision": revision + 1})
                pipe.execute()
                return revision + 1

        return self._call(transaction)

    def add(self, key: str, fields: Mapping[str, float]) -> None:
        if not fields:
            return

        def increments() -> None:
            with self.client.pipeline(transaction=True) as pipe:
                for field, amount in fields.items():
                    pipe.hincrbyfloat(self.prefix + "counters:" + key, field, float(amount))
                pipe.execute()

        self._call(increments)

    def totals(self, key: str) -> dict[str, float]:
        raw = self._call(lambda: self.client.hgetall(self.prefix + "counters:" + key))
        return {field.decode(): float(value) for field, value in raw.items()}

    def append(self, log: str, record: Mapping[str, Any]) -> None:
        self._call(lambda: self.client.rpush(self.prefix + "log:" + log,
                                             json.dumps(record, sort_keys=True, default=str)))

    def records(self, log: str) -> list[dict[str, Any]]:
        return [json.loads(v) for v in self._call(lambda: self.client.lrange(self.prefix + "log:" + log, 0, -1))]

    def close(self) -> None:
        self.client.close()


CONTROL_STORES: dict[str, Callable[[Any], ControlStore]] = {
    "sqlite": lambda settings: SQLiteControl(settings.serving.shared.sqlite_path or control_db(settings)),
    "redis": lambda settings: RedisControl(settings.serving.shared.redis_url, settings.serving.shared.key_prefix),
}


def open_control(settings: Any) -> ControlStore:
    """The control store ``serving.shared`` configures."""
    return CONTROL_STORES[settings.serving.shared.backend](settings)
