"""The run log every stage of a pipeline writes to, and the run summary built from it.

Each stage records its status, timing and result or error as one row of the metadata database
(``database.url``: SQLite under ``SKULENS_HOME`` by default, Postgres in production), keyed by
pipeline, run and stage. A stage writes only its own row, in one transaction, so parallel branches
of a DAG (and workers on other machines sharing the database) never overwrite each other, and a
retried stage replaces its earlier attempt (every stage is idempotent by run id). The final step of
a pipeline turns the rows into ``SKULENS_HOME/reports/<pipeline>/runs/<run_id>.json`` and
``latest.json``, whether the run succeeded or not, so a failed run is explained in the same place as
a good one.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from skulens.settings import Settings

_ENGINES: dict[str, Any] = {}
_ENGINES_LOCK = threading.Lock()


def runs_dir(settings: Settings, pipeline: str) -> Path:
    return settings.reports_dir / pipeline / "runs"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _table():  # noqa: ANN202 - SQLAlchemy is imported lazily (DAG parsing stays light)
    import sqlalchemy as sa

    table = getattr(_table, "cached", None)
    if table is None:
        table = sa.Table(
            "skulens_stage_runs", sa.MetaData(),
            sa.Column("pipeline", sa.String(64), primary_key=True),
            sa.Column("run_id", sa.String(250), primary_key=True),
            sa.Column("stage", sa.String(64), primary_key=True),
            sa.Column("entry", sa.Text, nullable=False),
            sa.Column("updated_at", sa.String(32), nullable=False),
        )
        _table.cached = table
    return table


def _engine(settings: Settings):  # noqa: ANN202
    """One engine per database URL and process (a forked task process must not reuse its parent's
    pooled connections); the table is created on first use."""
    key = f"{os.getpid()}:{settings.database.url}"
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _create_engine(settings.database.url)
            _ENGINES[key] = engine
    return engine


def _create_engine(url: str):  # noqa: ANN202
    import sqlalchemy as sa

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60})
        _retry_locked(lambda: _use_wal(engine))
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        _retry_locked(lambda: _table().metadata.create_all(engine, checkfirst=True))
    except sa.exc.OperationalError:
        # Another process created it between the check and the create: fine if it exists now.
        if not sa.inspect(engine).has_table(_table().name):
            raise
    except sa.exc.ProgrammingError:
        if not sa.inspect(engine).has_table(_table().name):
            raise
    return engine


def _use_wal(engine) -> None:  # noqa: ANN001
    """Write-ahead logging (persistent in the file), so readers never wait for the writer."""
    with engine.connect() as connection:
        connection.exec_driver_sql("pragma journal_mode=wal")


def _retry_locked(action: Callable[[], Any], attempts: int = 40) -> Any:
    """Run ``action``, retrying while SQLite says the database is locked: switching the journal
    mode and some lock upgrades return SQLITE_BUSY at once instead of waiting out the busy
    timeout, when two task processes start on a fresh file together."""
    import sqlalchemy as sa

    for attempt in range(attempts):
        try:
            return action()
        except sa.exc.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(0.02 * (attempt + 1), 0.5))
    return None


def _upsert(settings: Settings, pipeline: str, run_id: str, name: str, entry: dict[str, Any]) -> None:
    """Write one stage's row in one transaction (insert, or replace an earlier attempt's)."""
    engine = _engine(settings)
    table = _table()
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    values = {"pipeline": pipeline, "run_id": run_id, "stage": name,
              "entry": json.dumps(entry, default=str),
              "updated_at": datetime.now(UTC).isoformat(timespec="milliseconds")}
    statement = insert(table).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=["pipeline", "run_id", "stage"],
        set_={"entry": statement.excluded.entry, "updated_at": statement.excluded.updated_at})
    def write() -> None:
        with engine.begin() as connection:
            connection.execute(statement)

    _retry_locked(write)


def read_log(settings: Settings, pipeline: str, run_id: str) -> dict[str, Any]:
    """Every stage this run recorded so far, in the order they were last written."""
    import sqlalchemy as sa

    table = _table()
    query = (sa.select(table.c.stage, table.c.entry)
             .where(table.c.pipeline == pipeline, table.c.run_id == run_id)
             .order_by(table.c.updated_at))
    with _engine(settings).connect() as connection:
        rows = connection.execute(query).all()
    return {"pipeline": pipeline, "run_id": run_id, "stages": {stage: json.loads(entry) for stage, entry in rows}}


@contextmanager
def stage(settings: Settings, pipeline: str, run_id: str, name: str) -> Iterator[dict[str, Any]]:
    """Record a stage: yields a dict the stage fills with its result; errors are logged and re-raised."""
    result: dict[str, Any] = {}
    started = time.perf_counter()
    entry: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        yield result
    except BaseException as exc:
        entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    else:
        entry.update(status="success", result=result)
    finally:
        entry["seconds"] = round(time.perf_counter() - started, 2)
        _upsert(settings, pipeline, run_id, name, entry)


def stage_result(settings: Settings, pipeline: str, run_id: str, name: str) -> dict[str, Any]:
    """The result an earlier stage of this run recorded; RuntimeError if it has not succeeded."""
    entry = read_log(settings, pipeline, run_id)["stages"].get(name)
    if not entry or entry.get("status") != "success":
        raise RuntimeError(f"stage {name} of run {run_id} has not succeeded; run it first")
    return entry["result"]


def finish(settings: Settings, pipeline: str, run_id: str, expected: list[str],
           enrich: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write ``latest.json`` from the run log; its ``status`` is success only if every stage succeeded.
    ``enrich(log)`` may return a ``summary`` section (the pipeline's headline figures)."""
    log = read_log(settings, pipeline, run_id)
    stages = log["stages"]
    failed = [name for name in expected if stages.get(name, {}).get("status") == "failed"]
    missing = [name for name in expected if name not in stages]
    log.update(
        status="success" if not failed and not missing else "failed",
        failed_stage=failed[0] if failed else None,
        error=stages[failed[0]]["error"] if failed else None,
        not_run=missing,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if enrich is not None:
        log["summary"] = enrich(log)
    _write_json(runs_dir(settings, pipeline) / f"{run_id}.json", log)
    _write_json(settings.reports_dir / pipeline / "latest.json", log)
    return log


def raise_if_failed(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary, or RuntimeError naming the failed (or never run) stage and its error."""
    if summary["status"] != "success":
        where = summary["failed_stage"] or summary["not_run"]
        raise RuntimeError(f"{summary.get('pipeline')} run {summary.get('run_id')} failed at {where}: "
                           f"{summary['error']}")
    return summary


def run_stages(settings: Settings, pipeline: str, run_id: str, steps: list[Callable[[], Any]],
               expected: list[str]) -> dict[str, Any]:
    """Run ``steps`` in order in this process (what a DAG does, without Airflow), always write the
    summary, and raise if a stage failed."""
    try:
        for step in steps:
            step()
    finally:
        summary = finish(settings, pipeline, run_id, expected)
    return raise_if_failed(summary)
