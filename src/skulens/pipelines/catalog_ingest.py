"""The stages of the ``catalog_ingest`` pipeline (the DAG of the same name wires them).

validate_raw -> prepare_catalog -> gate_prepared (publish) -> build_pairs -> gate_pairs (publish)
-> dbt_build -> report.

Every stage records itself in the run log (:mod:`skulens.pipelines.runlog`); ``report`` writes
``SKULENS_HOME/reports/catalog_ingest/latest.json`` (rows in, rejects by rule, duplicates, pairs
per split, GX results, dbt results) and fails the run if any stage failed. A failing gate raises
before its output is published, so the previous good version stays current.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from skulens.pipelines.runlog import finish, raise_if_failed, run_stages, stage
from skulens.settings import Settings

PIPELINE = "catalog_ingest"
STAGES = ["validate_raw", "prepare_catalog", "gate_prepared", "build_pairs", "gate_pairs", "dbt_build"]
CATALOG = "fashion"  # the catalogue with photos (image-text pairs)
QUERIES = "homedepot"  # the catalogue with real queries (query-product pairs, events)


def validate_raw(settings: Settings, run_id: str, *, fashion_root: str | None = None,
                 homedepot_path: str | None = None) -> dict[str, Any]:
    """Load the raw files into canonical tables (reject gate), then GX-check judgments and events."""
    from skulens.data.catalog import catalog_dir
    from skulens.data.loaders import build_fashion, build_homedepot
    from skulens.quality.datasets import gate_events, gate_judgments
    from skulens.storage import VersionedDir

    with stage(settings, PIPELINE, run_id, "validate_raw") as out:
        fashion = build_fashion(settings, Path(fashion_root) if fashion_root else None)
        gates: list[dict[str, Any]] = []

        def judgments_gate(staging: Path) -> None:
            # On the staged tables, before they are published: a failing suite raises and the
            # previous judgments stay current.
            gates.append(gate_judgments(settings, staging / "judgments.parquet",
                                        staging / "products.parquet").to_dict())

        homedepot = build_homedepot(settings, Path(homedepot_path) if homedepot_path else None, gate=judgments_gate)
        tables = catalog_dir(settings, QUERIES)
        events = VersionedDir(settings.events_dir / QUERIES).current()
        if events is not None:
            gates.append(gate_events(settings, events, tables / "products.parquet").to_dict())
        out.update(
            tables={r.catalog: {name: {"rows_in": t.rows_in, "rows_out": t.rows_out, "rejected": t.rejected,
                                       "rejects_by_rule": t.rejects_by_rule, "defects_by_rule": t.defects_by_rule}
                                for name, t in r.tables.items()} for r in (fashion, homedepot)},
            events=str(events) if events else None,
            gx=gates,
        )
        return out


def prepare_catalog(settings: Settings, run_id: str) -> dict[str, Any]:
    """Spark ``prepare_catalog`` on the fashion catalogue, staged under ``run_id``."""
    from skulens.spark.prepare_catalog import run_prepare_catalog
    from skulens.spark.session import spark_session

    with stage(settings, PIPELINE, run_id, "prepare_catalog") as out:
        out.update(run_prepare_catalog(spark_session(settings, "prepare_catalog"), settings, CATALOG, run_id))
        return out


def gate_prepared(settings: Settings, run_id: str) -> dict[str, Any]:
    """GX gate on the staged prepared catalogue; publish it only when the gate passes."""
    from skulens.quality.datasets import gate_prepared as check
    from skulens.spark.prepare_catalog import prepared_store, publish

    with stage(settings, PIPELINE, run_id, "gate_prepared") as out:
        out["gx"] = check(settings, prepared_store(settings, CATALOG).staging_path(run_id)).to_dict()
        out["published"] = str(publish(settings, CATALOG, run_id))
        return out


def build_pairs(settings: Settings, run_id: str) -> dict[str, Any]:
    """Spark ``build_pairs`` from the current prepared catalogue, judgments and events."""
    from skulens.data.catalog import catalog_dir
    from skulens.spark.build_pairs import run_build_pairs
    from skulens.spark.session import spark_session
    from skulens.storage import VersionedDir
    from skulens.storage.layout import prepared_store

    with stage(settings, PIPELINE, run_id, "build_pairs") as out:
        prepared = prepared_store(settings, CATALOG).current()
        if prepared is None:
            raise FileNotFoundError("no published prepared catalogue: prepare_catalog and its gate must pass first")
        out.update(run_build_pairs(
            spark_session(settings, "build_pairs"), settings, run_id, prepared=prepared,
            judgments=catalog_dir(settings, QUERIES) / "judgments.parquet",
            events=VersionedDir(settings.events_dir / QUERIES).current()))
        return out


def gate_pairs(settings: Settings, run_id: str) -> dict[str, Any]:
    """GX gates on the staged pairs; publish them only when both pass."""
    from skulens.data.catalog import catalog_dir
    from skulens.quality.datasets import gate_pairs as check
    from skulens.spark.build_pairs import pairs_store, publish
    from skulens.storage.layout import prepared_store

    with stage(settings, PIPELINE, run_id, "gate_pairs") as out:
        results = check(settings, pairs_store(settings).staging_path(run_id),
                        prepared=prepared_store(settings, CATALOG).current(),
                        products=catalog_dir(settings, QUERIES) / "products.parquet")
        out["gx"] = [r.to_dict() for r in results]
        out["published"] = str(publish(settings, run_id))
        return out


def dbt_build(settings: Settings, run_id: str) -> dict[str, Any]:
    """``dbt build`` of the marts over the current published outputs."""
    from skulens.data.catalog import catalog_dir
    from skulens.storage import VersionedDir
    from skulens.storage.layout import pairs_store, prepared_store
    from skulens.warehouse.dbt import DbtInputs, run_dbt, service_events_folder

    with stage(settings, PIPELINE, run_id, "dbt_build") as out:
        events = VersionedDir(settings.events_dir / QUERIES).current()
        if events is None:
            raise FileNotFoundError("no events for the marts: run `skulens datasets simulate-events` or import logs")
        inputs = DbtInputs(prepared=prepared_store(settings, CATALOG).current(),
                           homedepot=catalog_dir(settings, QUERIES), events=events,
                           pairs=pairs_store(settings).current(), service_events=service_events_folder(settings))
        out.update(run_dbt(settings, inputs).to_dict())
        return out


def report(settings: Settings, run_id: str) -> dict[str, Any]:
    """Write ``latest.json`` for the run; raise if a stage failed or did not run."""
    return raise_if_failed(finish(settings, PIPELINE, run_id, STAGES))


def run_all(settings: Settings, run_id: str, **params: str | None) -> dict[str, Any]:
    """Run every stage in order in this process (what the DAG does, without Airflow)."""
    steps = [lambda: validate_raw(settings, run_id, **params)] + [
        lambda step=step: step(settings, run_id)
        for step in (prepare_catalog, gate_prepared, build_pairs, gate_pairs, dbt_build)]
    return run_stages(settings, PIPELINE, run_id, steps, STAGES)
