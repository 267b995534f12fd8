"""A per-run JSON log that every stage of a pipeline writes to, and the run summary built from it.

Each stage records its status, timing, and result or error into
``SKULENS_HOME/reports/<pipeline>/runs/<run_id>.json``. The final step of a pipeline turns that log
into ``latest.json``, whether the run succeeded or not, so a failed run is explained in the same
place as a good one.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from skulens.settings import Settings


def runs_dir(settings: Settings, pipeline: str) -> Path:
    return settings.reports_dir / pipeline / "runs"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_log(settings: Settings, pipeline: str, run_id: str) -> dict[str, Any]:
    path = runs_dir(settings, pipeline) / f"{run_id}.json"
    if not path.is_file():
        return {"pipeline": pipeline, "run_id": run_id, "stages": {}}
    return json.loads(path.read_text(encoding="utf-8"))


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
        log = read_log(settings, pipeline, run_id)
        log["stages"][name] = entry
        _write_json(runs_dir(settings, pipeline) / f"{run_id}.json", log)


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
