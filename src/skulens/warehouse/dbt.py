"""Run the dbt project (``dbt/``) programmatically and report each model and test.

Inputs are the current published outputs of the pipeline, passed as ``SKULENS_DBT_*`` environment
variables that the sources read. dbt's target and log folders live under
``SKULENS_HOME/warehouse`` so nothing is written into the repository.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skulens.settings import Settings


class DbtBuildError(RuntimeError):
    """``dbt build`` failed; the message names the failing models and tests."""


@dataclass
class DbtInputs:
    """Where the sources of the dbt project read from."""

    prepared: Path  # a prepare_catalog version folder
    homedepot: Path  # the homedepot canonical tables folder
    events: Path  # an events version folder (dt=*/ partitions)
    pairs: Path  # a build_pairs version folder
    service_events: Path  # the stream job's events table (date=*/batch_id=*/ partitions)

    def environment(self) -> dict[str, str]:
        return {"SKULENS_DBT_PREPARED": str(self.prepared), "SKULENS_DBT_HOMEDEPOT": str(self.homedepot),
                "SKULENS_DBT_EVENTS": str(self.events), "SKULENS_DBT_PAIRS": str(self.pairs),
                "SKULENS_DBT_SERVICE_EVENTS": str(self.service_events)}


def service_events_folder(settings: Settings) -> Path:
    """The stream job's events table, or, before any service has logged a search, an empty table
    of the same columns (so the marts build from the simulated log alone)."""
    import pyarrow.parquet as pq

    from skulens.storage.layout import stream_paths
    from skulens.streaming.job import _arrow_schema

    table = stream_paths(settings).events
    if any(table.glob("date=*/batch_id=*/*.parquet")):
        return table
    empty = settings.home / "warehouse" / "no_service_events"
    part = empty / "date=1970-01-01" / "batch_id=0" / "empty.parquet"
    if not part.is_file():
        part.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_arrow_schema(events_only=True).empty_table(), part)
    return empty


@dataclass
class DbtResult:
    success: bool
    nodes: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for node in self.nodes:
            out[node["status"]] = out.get(node["status"], 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "counts": self.counts(),
                "failed": [n for n in self.nodes if n["status"] in ("error", "fail")]}


def project_dir(settings: Settings) -> Path:
    return settings.project_root / "dbt"


def run_dbt(settings: Settings, inputs: DbtInputs, command: str = "build",
            select: list[str] | None = None) -> DbtResult:
    """Run ``dbt <command>`` on the configured target; raise :class:`DbtBuildError` on failure."""
    if settings.dbt.target == "duckdb":
        settings.dbt.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
        os.environ["SKULENS_DUCKDB_PATH"] = str(settings.dbt.duckdb_path)
    elif settings.dbt.spark is not None:
        os.environ.setdefault("SKULENS_SPARK_THRIFT_HOST", settings.dbt.spark.host)
        os.environ.setdefault("SKULENS_SPARK_THRIFT_PORT", str(settings.dbt.spark.port))
    os.environ.update(inputs.environment())
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
    from dbt.cli.main import dbtRunner

    work = settings.home / "warehouse" / "dbt"
    args = [command, "--project-dir", str(project_dir(settings)), "--profiles-dir", str(project_dir(settings)),
            "--target", settings.dbt.target, "--target-path", str(work / "target"),
            "--log-path", str(work / "logs"), "--no-use-colors", "--quiet"]
    if select:
        args += ["--select", *select]
    outcome = dbtRunner().invoke(args)
    _close_duckdb()
    if outcome.exception is not None and outcome.result is None:
        raise DbtBuildError(f"dbt {command} could not run: {outcome.exception}")
    nodes = [
        {"node": r.node.unique_id, "status": str(r.status), "failures": r.failures,
         "message": (r.message or "")[:500], "seconds": round(r.execution_time or 0.0, 3)}
        for r in (outcome.result.results if outcome.result is not None else [])
    ]
    result = DbtResult(success=bool(outcome.success), nodes=nodes)
    if not result.success:
        bad = "; ".join(f"{n['node']}: {n['status']} {n['message']}".strip() for n in result.to_dict()["failed"])
        raise DbtBuildError(f"dbt {command} failed: {bad or outcome.exception}")
    return result


def _close_duckdb() -> None:
    # dbt-duckdb keeps its connection open after invoke; close it so readers can open the file.
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager

        DuckDBConnectionManager.close_all_connections()
    except Exception:  # noqa: BLE001 - best effort: other adapters have no such manager
        pass
