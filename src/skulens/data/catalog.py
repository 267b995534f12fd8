"""Build, publish and read the canonical tables of a catalogue under ``SKULENS_HOME/tables``.

One catalogue (``fashion``, ``homedepot``, a user's ``mystore``) is a versioned folder::

    tables/<catalog>/CURRENT
    tables/<catalog>/versions/<version>/products.parquet
                                        judgments.parquet   (when the source has judgments)
                                        rejects.parquet     (records left out, with the rule)
                                        defects.parquet     (records kept, with the defect)
                                        report.json         (counts by rule, statistics)

A build whose rejected share exceeds ``datasets.max_reject_fraction`` raises
:class:`DataQualityError`, publishes nothing and leaves the previous version current; its rejects
are kept under ``reports/datasets/<catalog>/failed-<version>/`` for inspection.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from skulens.data.checks import CheckResult
from skulens.data.contracts import CONTRACTS, ISSUES
from skulens.settings import Settings
from skulens.storage import new_version_id
from skulens.storage.layout import tables_store


class DataQualityError(RuntimeError):
    """A build rejected too many records; nothing was published."""


@dataclass
class TableReport:
    """Counts for one table of a build."""

    rows_in: int
    rows_out: int
    rejected: int
    rejects_by_rule: dict[str, int]
    defects_by_rule: dict[str, int]
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildReport:
    """What one catalogue build read, kept, rejected and flagged."""

    catalog: str
    version: str
    sources: list[str]
    tables: dict[str, TableReport]
    built_at: str
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def table_stats(name: str, table: pa.Table) -> dict[str, Any]:
    """Summary statistics of a canonical table, for reports."""
    if name == "products":
        with_photo = table.num_rows - table.column("image_uri").null_count
        leaves = {path[-1] for path in table.column("category_path").to_pylist() if path}
        return {
            "products": table.num_rows,
            "with_photo": with_photo,
            "without_photo": table.num_rows - with_photo,
            "with_price": table.num_rows - table.column("price").null_count,
            "leaf_categories": len(leaves),
        }
    if name == "judgments":
        grades = table.column("grade")
        return {
            "judgments": table.num_rows,
            "queries": len(pc.unique(table.column("query"))),
            "products": len(pc.unique(table.column("product_id"))),
            "grade_min": pc.min(grades).as_py(),
            "grade_max": pc.max(grades).as_py(),
            "grade_mean": round(pc.mean(grades).as_py() or 0.0, 4),
        }
    return {"rows": table.num_rows}


def publish_catalog(settings: Settings, catalog: str, tables: dict[str, pa.Table],
                    checks: dict[str, CheckResult], sources: list[Path],
                    gate: Callable[[Path], Any] | None = None) -> BuildReport:
    """Validate the reject share, then publish ``tables`` as the catalogue's new current version.

    ``gate(staging_folder)`` runs on the written tables before they are published (a Great
    Expectations suite, say): when it raises, nothing is published and the previous version stays."""
    version = new_version_id()
    report = BuildReport(
        catalog=catalog,
        version=version,
        sources=[str(s) for s in sources],
        tables={
            name: TableReport(
                rows_in=checks[name].rows_in,
                rows_out=table.num_rows,
                rejected=checks[name].rows_rejected,
                rejects_by_rule=checks[name].counts("rejects"),
                defects_by_rule=checks[name].counts("defects"),
                stats=table_stats(name, table),
            )
            for name, table in tables.items()
        },
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    rejects = pa.concat_tables([c.rejects for c in checks.values()]) if checks else ISSUES.empty_table()
    defects = pa.concat_tables([c.defects for c in checks.values()]) if checks else ISSUES.empty_table()

    too_many = [
        (name, t) for name, t in report.tables.items()
        if t.rows_in and t.rejected / t.rows_in > settings.datasets.max_reject_fraction
    ]
    if too_many:
        failed = settings.reports_dir / "datasets" / catalog / f"failed-{version}"
        failed.mkdir(parents=True, exist_ok=True)
        pq.write_table(rejects, failed / "rejects.parquet")
        (failed / "report.json").write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
        current = tables_store(settings, catalog).current_id()
        lines = [
            f"{name}: {t.rejected} of {t.rows_in} records rejected "
            f"({t.rejected / t.rows_in:.1%} > {settings.datasets.max_reject_fraction:.1%} allowed); "
            f"by rule: {_top_rules(rejects, name)}"
            for name, t in too_many
        ]
        raise DataQualityError(
            f"catalogue {catalog!r} not published. " + " | ".join(lines)
            + f". Rejects: {failed / 'rejects.parquet'}. "
            + (f"Version {current} stays current." if current else "No version was published before.")
        )

    store = tables_store(settings, catalog)
    with store.build(version, keep=settings.datasets.keep_versions) as staging:
        for name, table in tables.items():
            pq.write_table(CONTRACTS[name].conform(table), staging / f"{name}.parquet")
        pq.write_table(rejects, staging / "rejects.parquet")
        pq.write_table(defects, staging / "defects.parquet")
        (staging / "report.json").write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
        if gate is not None:
            gate(staging)
    report.path = str(store.versions / version)
    latest = settings.reports_dir / "datasets" / catalog / "latest.json"
    latest.parent.mkdir(parents=True, exist_ok=True)
    latest.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    return report


def _top_rules(rejects: pa.Table, table: str, limit: int = 5) -> str:
    rows = [r for r in rejects.to_pylist() if r["table"] == table]
    counts: dict[str, list[int]] = {}
    for row in rows:
        counts.setdefault(f"{row['field']}:{row['rule']}", []).append(row["row_number"])
    ranked = sorted(counts.items(), key=lambda kv: -len(kv[1]))[:limit]
    return ", ".join(
        f"{rule} x{len(nums)} (records {', '.join(map(str, nums[:3]))}{'...' if len(nums) > 3 else ''})"
        for rule, nums in ranked
    )


def catalog_dir(settings: Settings, catalog: str) -> Path:
    """The folder of the catalogue's current version; raise FileNotFoundError if none."""
    current = tables_store(settings, catalog).current()
    if current is None:
        raise FileNotFoundError(
            f"catalogue {catalog!r} has no published tables under {settings.tables_dir}; "
            "run `skulens datasets build` or `skulens datasets import` first"
        )
    return current


def read_table(settings: Settings, catalog: str, name: str) -> pa.Table:
    """Read table ``name`` of the catalogue's current version."""
    path = catalog_dir(settings, catalog) / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"catalogue {catalog!r} has no {name} table ({path})")
    return pq.read_table(path)


def read_report(settings: Settings, catalog: str) -> dict[str, Any]:
    """The report.json of the catalogue's current version."""
    return json.loads((catalog_dir(settings, catalog) / "report.json").read_text(encoding="utf-8"))


def list_catalogs(settings: Settings) -> list[str]:
    """Catalogues with a published version."""
    if not settings.tables_dir.is_dir():
        return []
    return sorted(p.name for p in settings.tables_dir.iterdir()
                  if tables_store(settings, p.name).current_id() is not None)
