"""Run a Great Expectations suite from ``expectations/<name>.json`` as a gate.

A suite file is plain JSON, reviewed like code::

    {"name": "products", "description": "...",
     "expectations": [{"type": "expect_column_values_to_be_unique",
                       "kwargs": {"column": "product_id"}, "meta": {"rule": "key_unique"}}]}

:func:`run_gate` validates a pandas DataFrame against the suite in a file-backed GX context under
``SKULENS_HOME/gx``, rebuilds the HTML data docs under ``SKULENS_HOME/reports/gx_docs``, and
raises :class:`QualityGateError` naming every failed expectation (its rule, column, count and a
few offending values) when the suite fails. Checks that need more than one column or table
(a pair's product must exist, event times must be ordered within a session) are computed into
boolean columns first by the caller and then expected to be true, so that every rule shows up
in the same report.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skulens.settings import Settings


class QualityGateError(RuntimeError):
    """A dataset failed its expectation suite; the run must stop and publish nothing."""

    def __init__(self, result: GateResult) -> None:
        self.result = result
        failed = "; ".join(
            f"{f['rule']} ({f['expectation']} on {f['column']}): {f['unexpected_count']} bad"
            + (f", e.g. {f['examples']}" if f["examples"] else "")
            for f in result.failures
        )
        super().__init__(f"quality gate '{result.suite}' failed on {result.dataset}: {failed}. "
                         f"Data docs: {result.docs_index}")


@dataclass
class GateResult:
    """The outcome of one gate run."""

    suite: str
    dataset: str
    success: bool
    evaluated: int
    rows: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    docs_index: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "dataset": self.dataset, "success": self.success,
                "evaluated": self.evaluated, "rows": self.rows, "failures": self.failures,
                "docs_index": self.docs_index}


def suites_dir(settings: Settings) -> Path:
    """The repo folder of suite files."""
    return settings.project_root / "expectations"


def load_suite_spec(path: Path) -> dict[str, Any]:
    """Read and sanity-check a suite file (raises ValueError naming the problem)."""
    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(spec.get("expectations"), list) or not spec["expectations"]:
        raise ValueError(f"{path}: a suite needs a non-empty 'expectations' list")
    for i, item in enumerate(spec["expectations"]):
        if not isinstance(item, dict) or "type" not in item or "kwargs" not in item:
            raise ValueError(f"{path}: expectation {i} needs 'type' and 'kwargs'")
    return spec


def _context(settings: Settings):  # noqa: ANN202 - GX types
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    root = settings.home / "gx"
    root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    site = {
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                          "base_directory": str(settings.reports_dir / "gx_docs")},
    }
    if "local_site" in context.list_data_docs_sites():
        context.update_data_docs_site("local_site", site)
    else:
        context.add_data_docs_site("local_site", site)
    return context


def run_gate(settings: Settings, suite_name: str, frame: Any, *, dataset: str,
             raise_on_failure: bool = True) -> GateResult:
    """Validate ``frame`` with ``expectations/<suite_name>.json``; raise QualityGateError on failure.

    ``frame`` is a pandas DataFrame (small tables) or a Spark DataFrame: a Spark output is validated
    by GX's Spark data source where it lies (the expectations run as Spark jobs; only their
    results and a few unexpected examples reach the driver), never collected into driver pandas."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    spec = load_suite_spec(suites_dir(settings) / f"{suite_name}.json")
    # GX stores these names as file names: keep them to a safe alphabet.
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset)
    context = _context(settings)
    expectations = []
    for item in spec["expectations"]:
        meta = {"rule": item.get("meta", {}).get("rule", item["type"]), **item.get("meta", {})}
        config = ExpectationConfiguration(type=item["type"], kwargs=item["kwargs"], meta=meta)
        expectations.append(config.to_domain_obj())  # raises on an unknown type, unlike dicts
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=suite_name, expectations=expectations))
    # One data source, asset, validation and checkpoint per suite, replaced on every run, so that
    # the stored context never refers to a dataset of an earlier run; the dataset is the run name.
    spark = _is_spark(frame)
    source = (context.data_sources.add_or_update_spark(name=f"skulens_spark_{suite_name}") if spark
              else context.data_sources.add_or_update_pandas(name=f"skulens_{suite_name}"))
    batch = source.add_dataframe_asset(name=suite_name).add_batch_definition_whole_dataframe("whole")
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=suite_name, data=batch, suite=suite))
    checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
        name=suite_name, validation_definitions=[validation],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["local_site"])],
        result_format="SUMMARY"))
    from great_expectations.core.run_identifier import RunIdentifier

    outcome = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=RunIdentifier(run_name=safe))
    run_results = list(outcome.run_results.values())[0]
    failures = []
    for item in run_results.results:
        if item.success:
            continue
        config = item.expectation_config
        details = item.result or {}
        examples = details.get("partial_unexpected_list") or []
        failures.append({
            "rule": (config.meta or {}).get("rule", config.type),
            "expectation": config.type,
            "column": config.kwargs.get("column") or config.kwargs.get("column_list"),
            "unexpected_count": details.get("unexpected_count", details.get("observed_value")),
            "examples": [str(e) for e in examples[:3]],
        })
    docs = settings.reports_dir / "gx_docs" / "index.html"
    result = GateResult(suite=suite_name, dataset=dataset, success=bool(outcome.success),
                        evaluated=len(run_results.results), rows=frame.count() if spark else len(frame),
                        failures=failures,
                        docs_index=str(docs) if docs.exists() else None)
    if not result.success and raise_on_failure:
        raise QualityGateError(result)
    return result


def _is_spark(frame: Any) -> bool:
    return type(frame).__module__.startswith("pyspark.")
