"""SQLite files that several threads and processes share (online features, the control store)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


def thread_connection(local: threading.local, path: Path, timeout: float) -> sqlite3.Connection:
    """This thread's connection to ``path``, opened on first use: autocommit, WAL (readers never
    wait for the one writer), ``synchronous=normal`` (durable at checkpoints, fast commits)."""
    db = getattr(local, "db", None)
    if db is None:
        db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        db.execute("pragma journal_mode=wal")
        db.execute("pragma synchronous=normal")
        local.db = db
    return db
