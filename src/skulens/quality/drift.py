"""Drift checks with Evidently 0.7: a reference window against the current one.

Checks (registered by name in :data:`CHECKS`; method and threshold per check in
``monitoring.drift.checks``):

* ``query_text``: per search, query length in words, the share of its words outside the
  catalogue's vocabulary, whether it found nothing;
* ``query_embeddings``: the served query vectors, projected on the reference's first principal
  components (each component compared; Evidently's classifier method runs t-SNE for its plot,
  tens of seconds a run);
* ``catalog``: the published catalogue against the previous version: category mix, price, title
  length, photo share;
* ``outcomes``: per search, clicks and zero results, per variant.

Each check writes an Evidently report (HTML + JSON) and returns its columns' scores; a check
drifts when at least half of its columns do.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class CheckResult:
    name: str
    columns: list[dict[str, Any]] = field(default_factory=list)
    drifted: bool = False
    skipped: str | None = None  # why no decision (too few rows, no previous version)
    report: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def compare(name: str, reference: pd.DataFrame, current: pd.DataFrame, *, method: str, threshold: float,
            folder: Path, categorical: tuple[str, ...] = ()) -> CheckResult:
    """Evidently ``ValueDrift`` on every column of ``reference``/``current``; the report saved in
    ``folder`` as ``<name>.html`` and ``<name>.json``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import ValueDrift

        columns = list(reference.columns)
        definition = DataDefinition(numerical_columns=[c for c in columns if c not in categorical],
                                    categorical_columns=[c for c in columns if c in categorical])
        report = Report([ValueDrift(column=c, method=method, threshold=threshold) for c in columns],
                        include_tests=True)
        snapshot = report.run(Dataset.from_pandas(current, data_definition=definition),
                              Dataset.from_pandas(reference, data_definition=definition))
    folder.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(folder / f"{name}.html"))
    snapshot.save_json(str(folder / f"{name}.json"))
    doc = snapshot.dict()
    status = {t["metric_config"]["metric_id"]: str(t["status"]) for t in doc.get("tests", [])}
    rows = []
    for metric in doc["metrics"]:
        config = metric["config"]
        state = status.get(metric["id"])
        rows.append({"column": config["column"], "method": config["method"], "threshold": config["threshold"],
                     "score": round(float(metric["value"]), 5), "drifted": bool(state and state.endswith("FAIL"))})
    drifted = sum(r["drifted"] for r in rows) * 2 >= len(rows) > 0
    return CheckResult(name, rows, drifted, report=str(folder / f"{name}.html"))


def query_frame(searches: pd.DataFrame, vocabulary: set[str]) -> pd.DataFrame:
    """``query_text`` columns from search rows (``query``, ``results``)."""
    words = searches["query"].fillna("").str.lower().str.findall(r"[a-z0-9]+")
    return pd.DataFrame({
        "query_length": words.str.len().astype(float),
        "oov_share": words.map(lambda ws: sum(w not in vocabulary for w in ws) / len(ws) if ws else 0.0),
        "zero_result": (searches["results"].fillna(0) == 0).astype(float)})


def outcome_frame(searches: pd.DataFrame, clicks: pd.Series) -> pd.DataFrame:
    """``outcomes`` columns: per search, its clicks and whether it found nothing."""
    return pd.DataFrame({"clicks": searches["search_id"].map(clicks).fillna(0).astype(float),
                         "zero_result": (searches["results"].fillna(0) == 0).astype(float)})


def embedding_frames(reference: np.ndarray, current: np.ndarray, components: int = 8
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both sets of query vectors on the reference's first principal components."""
    mean = reference.mean(axis=0)
    _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
    basis = vt[:components].T
    names = [f"pc{i + 1}" for i in range(basis.shape[1])]
    return (pd.DataFrame((reference - mean) @ basis, columns=names),
            pd.DataFrame((current - mean) @ basis, columns=names))


def catalog_frame(products: pd.DataFrame) -> pd.DataFrame:
    """``catalog`` columns of a catalogue version's products."""
    paths = products["category_path"] if "category_path" in products else pd.Series([[]] * len(products))
    return pd.DataFrame({
        "category": paths.map(lambda p: str(p[0]) if p is not None and len(p) else "none"),
        "price": pd.to_numeric(products.get("price", pd.Series([np.nan] * len(products))), errors="coerce")
        .fillna(0.0).astype(float),
        "title_length": products["title"].fillna("").str.split().str.len().astype(float),
        "has_photo": products.get("image_uri", pd.Series([None] * len(products))).notna().astype(float)})


CHECKS: dict[str, Callable[..., Any]] = {"query_text": query_frame, "outcomes": outcome_frame,
                                         "query_embeddings": embedding_frames, "catalog": catalog_frame}
