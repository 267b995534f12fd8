"""The online feature store and the service's cache of it.

The stream job upserts one JSON document of features per key (``product:<id>``, ``query:<text>``)
after every micro-batch; the service reads them through :class:`FeatureCache`. Two stores, picked
by ``stream.online_store.backend`` (registered by name in :data:`STORES`):

* ``sqlite`` (the default): one table in an embedded SQLite file, WAL mode so that the stream job
  writes while several service workers read;
* ``redis``: a hash field per key plus a sorted set of keys by update time, so that a reader can
  fetch just what changed since its last look.

Upserts write absolute values (features recomputed from the events table), never increments: a
micro-batch replayed after a crash writes the same documents again, so the store stays exact.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from skulens.storage.sqlite import thread_connection


class OnlineStoreError(RuntimeError):
    """The online store cannot be reached or read."""


class OnlineStore(Protocol):
    def upsert(self, features: Mapping[str, Mapping[str, Any]], updated_at: float | None = None) -> int: ...
    def get(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]: ...
    def changed_since(self, since: float) -> tuple[dict[str, dict[str, Any]], float]: ...
    def close(self) -> None: ...


class SQLiteStore:
    """Features in a SQLite file (``stream.online_store.sqlite_path``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as db:
            db.execute("create table if not exists features (key text primary key, value text not null, "
                       "updated_at real not null)")
            db.execute("create index if not exists features_updated on features (updated_at)")

    def _connection(self) -> sqlite3.Connection:
        try:
            return thread_connection(self._local, self.path, 5.0)
        except sqlite3.Error as exc:
            raise OnlineStoreError(f"online store {self.path}: {exc}") from exc

    def upsert(self, features: Mapping[str, Mapping[str, Any]], updated_at: float | None = None) -> int:
        stamp = time.time() if updated_at is None else updated_at
        rows = [(key, json.dumps(value, sort_keys=True), stamp) for key, value in features.items()]
        try:
            db = self._connection()
            db.execute("begin")
            db.executemany("insert into features (key, value, updated_at) values (?, ?, ?) on conflict(key) "
                           "do update set value = excluded.value, updated_at = excluded.updated_at", rows)
            db.execute("commit")
        except sqlite3.Error as exc:
            raise OnlineStoreError(f"online store {self.path}: {exc}") from exc
        return len(rows)

    def get(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(keys)
        found: dict[str, dict[str, Any]] = {}
        try:
            db = self._connection()
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for key, value in db.execute(f"select key, value from features where key in ({marks})",  # noqa: S608
                                             chunk):
                    found[key] = json.loads(value)
        except sqlite3.Error as exc:
            raise OnlineStoreError(f"online store {self.path}: {exc}") from exc
        return found

    def changed_since(self, since: float) -> tuple[dict[str, dict[str, Any]], float]:
        """Documents updated after ``since`` and the newest update time among them (else ``since``)."""
        try:
            rows = self._connection().execute(
                "select key, value, updated_at from features where updated_at > ? order by updated_at", (since,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise OnlineStoreError(f"online store {self.path}: {exc}") from exc
        return {key: json.loads(value) for key, value, _ in rows}, max((r[2] for r in rows), default=since)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class RedisStore:
    """Features in Redis: hash ``<prefix>:features`` and sorted set ``<prefix>:features:updated``."""

    def __init__(self, url: str, prefix: str = "skulens") -> None:
        import redis

        self.url = url
        self._client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._hash, self._updated = f"{prefix}:features", f"{prefix}:features:updated"

    def _call(self, action: Any) -> Any:
        import redis

        try:
            return action()
        except redis.RedisError as exc:
            raise OnlineStoreError(f"online store {self.url}: {exc}") from exc

    def upsert(self, features: Mapping[str, Mapping[str, Any]], updated_at: float | None = None) -> int:
        stamp = time.time() if updated_at is None else updated_at
        items = list(features.items())

        def write() -> None:
            for start in range(0, len(items), 1000):
                chunk = dict(items[start:start + 1000])
                pipe = self._client.pipeline(transaction=True)
                pipe.hset(self._hash, mapping={k: json.dumps(v, sort_keys=True) for k, v in chunk.items()})
                pipe.zadd(self._updated, dict.fromkeys(chunk, stamp))
                pipe.execute()

        if items:
            self._call(write)
        return len(items)

    def get(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(keys)
        if not keys:
            return {}
        values = self._call(lambda: self._client.hmget(self._hash, keys))
        return {k: json.loads(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def changed_since(self, since: float) -> tuple[dict[str, dict[str, Any]], float]:
        pairs = self._call(lambda: self._client.zrangebyscore(self._updated, f"({since}", "+inf", withscores=True))
        if not pairs:
            return {}, since
        keys = [k.decode() for k, _ in pairs]
        return self.get(keys), max(score for _, score in pairs)

    def close(self) -> None:
        self._client.close()


def open_store(settings: Any) -> OnlineStore:
    """The online store ``stream.online_store`` configures."""
    config = settings.stream.online_store
    return STORES[config.backend](settings)


def _sqlite(settings: Any) -> SQLiteStore:
    from skulens.storage.layout import stream_paths

    return SQLiteStore(settings.stream.online_store.sqlite_path or stream_paths(settings).online_db)


def _redis(settings: Any) -> RedisStore:
    config = settings.stream.online_store
    return RedisStore(config.redis_url, config.key_prefix)


STORES = {"sqlite": _sqlite, "redis": _redis}


class FeatureCache:
    """The service's in-memory copy of the online features, refreshed every ``refresh_s`` seconds
    from what changed in the store. A search reads only this copy, never the store.

    :meth:`lookup` gives the features of a key and a flag: ``None`` when fresh, ``"features_stale"``
    when the last good refresh is older than ``stale_s`` (the store is down or the stream stopped
    writing), ``"features_unavailable"`` when the store was never read. A missing key is no error:
    the product simply has no events yet."""

    def __init__(self, open_store_fn: Any, refresh_s: float = 2.0, stale_s: float = 120.0,
                 max_keys: int = 2_000_000) -> None:
        self._open = open_store_fn
        self.refresh_s, self.stale_s, self.max_keys = refresh_s, stale_s, max_keys
        self._features: dict[str, dict[str, Any]] = {}
        self._since = 0.0
        self.refreshed_at: float | None = None
        self.last_error: str | None = None
        self._store: OnlineStore | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> FeatureCache:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="skulens-feature-cache", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def refresh(self) -> int:
        """Pull what changed since the last refresh; the number of documents taken (0 on failure)."""
        try:
            if self._store is None:
                self._store = self._open()
            changed, newest = self._store.changed_since(self._since)
        except Exception as exc:  # noqa: BLE001 - a store that is down is a flagged fallback, not an error
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            self._store = None
            return 0
        if len(self._features) + len(changed) > self.max_keys:
            self._features.clear()  # rare: start over rather than grow without bound
        self._features.update(changed)
        self._since = newest
        self.refreshed_at = time.time()
        self.last_error = None
        return len(changed)

    def status(self) -> str | None:
        if self.refreshed_at is None:
            return "features_unavailable"
        if time.time() - self.refreshed_at > self.stale_s:
            return "features_stale"
        return None

    def lookup(self, key: str) -> dict[str, Any] | None:
        return self._features.get(key)

    def close(self) -> None:
        self._stop.set()
        if self._store is not None:
            self._store.close()
