"""The gates of the batch data layer: derive the cross-column checks, then run the suite."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds

from skulens.data.events import ordered_within_session
from skulens.quality.gate import GateResult, run_gate
from skulens.settings import Settings


def _read(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read the Parquet files under ``path`` (hive partitions become columns; other files are skipped)."""
    files = sorted(str(f) for f in Path(path).rglob("*.parquet") if not f.name.startswith((".", "_")))
    if not files:
        raise FileNotFoundError(f"no Parquet files under {path}")
    dataset = ds.dataset(files, format="parquet", partitioning="hive", partition_base_dir=str(path))
    return dataset.to_table(columns=columns).to_pandas()


def _product_known(frame: pd.DataFrame, products: Path) -> pd.Series:
    """True where the row's product_id is a key of the products table at ``products``."""
    return frame["product_id"].isin(set(pd.read_parquet(products, columns=["product_id"])["product_id"]))


def gate_prepared(settings: Settings, staging: Path) -> GateResult:
    """``products_prepared`` on a staged ``prepare_catalog`` run."""
    frame = _read(staging / "catalog", ["product_id", "title", "title_norm", "category_leaf", "price", "image_uri",
                                        "photo_width", "dup_group"])
    frame["photo_exists"] = frame["image_uri"].map(lambda u: os.path.isfile(u) if isinstance(u, str) else None)
    return run_gate(settings, "products_prepared", frame, dataset=f"prepared/{staging.name}")


def gate_pairs(settings: Settings, staging: Path, *, prepared: Path, products: Path) -> list[GateResult]:
    """``pairs_image_text`` and ``pairs_query_product`` on a staged ``build_pairs`` run."""
    known_images = set(_read(prepared / "catalog", ["product_id"])["product_id"])
    image_text = _read(staging / "image_text")
    image_text["product_known"] = image_text["product_id"].isin(known_images)
    splits = image_text.groupby("dup_group")["split"].nunique()
    image_text["group_in_one_split"] = image_text["dup_group"].map(splits).eq(1)

    query_product = _read(staging / "query_product")
    query_product["product_known"] = _product_known(query_product, products)
    per_query = query_product.groupby("query")["split"].nunique()
    query_product["query_in_one_split"] = query_product["query"].map(per_query).eq(1)
    return [
        run_gate(settings, "pairs_image_text", image_text, dataset=f"pairs/{staging.name}/image_text"),
        run_gate(settings, "pairs_query_product", query_product, dataset=f"pairs/{staging.name}/query_product"),
    ]


def gate_judgments(settings: Settings, judgments: Path, products: Path) -> GateResult:
    """``judgments`` on a catalogue's canonical judgments."""
    frame = pd.read_parquet(judgments)
    frame["product_known"] = _product_known(frame, products)
    return run_gate(settings, "judgments", frame, dataset=str(judgments.parent.name))


def gate_events(settings: Settings, events: Path, products: Path) -> GateResult:
    """``events`` on a folder of date-partitioned events (file order is the log order)."""
    frame = _read(events, ["event_id", "ts", "session_id", "product_id", "event_type", "position"])
    frame["ts_ordered_in_session"] = ordered_within_session(frame)
    frame["product_known"] = _product_known(frame, products)
    return run_gate(settings, "events", frame, dataset=f"events/{events.name}")
