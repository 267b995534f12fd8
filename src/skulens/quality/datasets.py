"""The gates of the batch data layer: derive the cross-column checks, then run the suite."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


def gate_prepared(settings: Settings, staging: Path, spark: Any | None = None) -> GateResult:
    """``products_prepared`` on a staged ``prepare_catalog`` run, validated as a Spark DataFrame
    where it lies; the photo-exists check runs on the executors (``mapInPandas``), not one by one
    on the driver."""
    from pyspark.sql import types as T

    spark = spark or _spark(settings)
    frame = spark.read.parquet(str(staging / "catalog")).select(
        "product_id", "title", "title_norm", "category_leaf", "price", "image_uri", "photo_width", "dup_group")
    schema = T.StructType([*frame.schema.fields, T.StructField("photo_exists", T.BooleanType(), True)])
    frame = frame.mapInPandas(_with_photo_exists, schema=schema)
    return run_gate(settings, "products_prepared", frame, dataset=f"prepared/{staging.name}")


def _with_photo_exists(batches: Any) -> Any:
    for batch in batches:
        batch["photo_exists"] = batch["image_uri"].map(lambda u: os.path.isfile(u) if isinstance(u, str) else None)
        yield batch


def gate_pairs(settings: Settings, staging: Path, *, prepared: Path, products: Path,
               spark: Any | None = None) -> list[GateResult]:
    """``pairs_image_text`` and ``pairs_query_product`` on a staged ``build_pairs`` run, in Spark:
    membership by joins and one-split-per-group by window aggregates (nothing collected)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spark = spark or _spark(settings)

    def known(frame: Any, ids: Any) -> Any:
        keys = ids.select("product_id").distinct().withColumn("product_known", F.lit(True))
        return frame.join(F.broadcast(keys), "product_id", "left").fillna({"product_known": False})

    image_text = known(spark.read.parquet(str(staging / "image_text")),
                       spark.read.parquet(str(prepared / "catalog")))
    image_text = image_text.withColumn(
        "group_in_one_split", F.size(F.collect_set("split").over(Window.partitionBy("dup_group"))) == 1)
    query_product = known(spark.read.parquet(str(staging / "query_product")), spark.read.parquet(str(products)))
    query_product = query_product.withColumn(
        "query_in_one_split", F.size(F.collect_set("split").over(Window.partitionBy("query"))) == 1)
    return [
        run_gate(settings, "pairs_image_text", image_text, dataset=f"pairs/{staging.name}/image_text"),
        run_gate(settings, "pairs_query_product", query_product, dataset=f"pairs/{staging.name}/query_product"),
    ]


def _spark(settings: Settings) -> Any:
    from skulens.spark.session import spark_session

    return spark_session(settings, "quality_gates")


def gate_judgments(settings: Settings, judgments: Path, products: Path) -> GateResult:
    """``judgments`` on a catalogue's canonical judgments (a table small enough for pandas)."""
    frame = pd.read_parquet(judgments)
    frame["product_known"] = _product_known(frame, products)
    return run_gate(settings, "judgments", frame, dataset=str(judgments.parent.name))


def gate_events(settings: Settings, events: Path, products: Path) -> GateResult:
    """``events`` on a folder of date-partitioned events (file order is the log order)."""
    frame = _read(events, ["event_id", "ts", "session_id", "product_id", "event_type", "position"])
    frame["ts_ordered_in_session"] = ordered_within_session(frame)
    frame["product_known"] = _product_known(frame, products)
    return run_gate(settings, "events", frame, dataset=f"events/{events.name}")
