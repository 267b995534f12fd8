"""The bundled Home Depot relevance judgments (``homedepot/judgments.csv``).

59,167 rows of real customer search terms with real product titles, graded by human raters from
1 (irrelevant) to 3 (exact), averaged over raters. The loader produces two tables:

* ``judgments``: query, product_id, grade, source='homedepot:human';
* ``products``: one row per product_uid with its title (text only: no photo, category or price).
  When raters saw different titles for one product (a real defect of the data), the most frequent
  title is kept and the product is flagged with rule ``title_conflict``.

The same reader takes any file in this format, so a user can evaluate on their own judgments.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from skulens.data.checks import ROW, CheckResult, RecordChecker, blank
from skulens.data.contracts import CONTRACTS
from skulens.data.sources import SourceError, read_records

COLUMNS = ("product_uid", "product_title", "search_term", "relevance")
SOURCE = "homedepot:human"


def load_homedepot(path: Path, *, min_grade: float = 1.0,
                   max_grade: float = 3.0) -> tuple[dict[str, pa.Table], dict[str, CheckResult]]:
    """Read a Home Depot-format judgments CSV; return ``{"products", "judgments"}`` and their checks."""
    raw = read_records(Path(path), "csv")
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise SourceError(f"{path}: columns missing: {', '.join(missing)} "
                          f"(a Home Depot judgments file has {', '.join(COLUMNS)})")
    frame = pd.DataFrame({
        ROW: raw.frame[ROW],
        "query": raw.frame["search_term"].str.strip(),
        "product_id": raw.frame["product_uid"].str.strip(),
        "title": raw.frame["product_title"].str.strip(),
        "grade": raw.frame["relevance"].str.strip(),
    })
    checker = RecordChecker(frame, "judgments", str(path), key_field="query")
    checker.add_rejects(raw.malformed)
    checker.require("query")
    checker.require("product_id")
    checker.require("grade")
    grade = checker.parse_float("grade", minimum=min_grade, maximum=max_grade)
    checker.unique(["query", "product_id"])
    judgments_check = checker.result()
    alive = checker.alive
    judgments = pa.table({
        "query": frame.loc[alive, "query"].tolist(),
        "product_id": frame.loc[alive, "product_id"].tolist(),
        "grade": grade[alive].to_numpy(dtype="float64"),
        "source": [SOURCE] * int(alive.sum()),
    })
    products, products_check = _products(frame.loc[alive], str(path))
    tables = {"products": products, "judgments": CONTRACTS["judgments"].conform(judgments)}
    return tables, {"products": products_check, "judgments": judgments_check}


def _products(judged: pd.DataFrame, source: str) -> tuple[pa.Table, CheckResult]:
    titled = judged.loc[~blank(judged["title"])]
    counts = titled.groupby(["product_id", "title"], sort=False).size().rename("n").reset_index()
    # The most frequent title wins; ties go to the title seen first.
    counts["first_seen"] = np.arange(len(counts))
    counts = counts.sort_values(["product_id", "n", "first_seen"], ascending=[True, False, True])
    chosen = counts.drop_duplicates("product_id", keep="first")
    variants = counts.groupby("product_id").size()
    first_rows = judged.drop_duplicates("product_id", keep="first")[["product_id", ROW]]
    products = first_rows.merge(chosen[["product_id", "title"]], on="product_id", how="left")
    products["title"] = products["title"].fillna("")
    products["variants"] = products["product_id"].map(variants).fillna(0).astype(int)

    checker = RecordChecker(products, "products", source, key_field="product_id")
    checker.defect((products["variants"] > 1).to_numpy(), "title", "title_conflict",
                   "raters saw several titles for this product; the most frequent one is kept")
    checker.require("title", "no judgment row gives this product a title")
    result = checker.result()
    alive = checker.alive
    n = int(alive.sum())
    mtime = datetime.fromtimestamp(os.stat(source).st_mtime, UTC).replace(tzinfo=None)
    table = pa.table({
        "product_id": products.loc[alive, "product_id"].tolist(),
        "title": products.loc[alive, "title"].tolist(),
        "description": pa.nulls(n, pa.string()),
        "brand": pa.nulls(n, pa.string()),
        "category_path": pa.array([[] for _ in range(n)], type=pa.list_(pa.string())),
        "attributes": pa.array([[] for _ in range(n)], type=pa.map_(pa.string(), pa.string())),
        "price": pa.nulls(n, pa.float64()),
        "currency": pa.nulls(n, pa.string()),
        "image_uri": pa.nulls(n, pa.string()),
        "updated_at": pa.array([mtime] * n, type=pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
    })
    return CONTRACTS["products"].conform(table), result
