"""``build_pairs``: training pairs for the two-tower model and the reranker (Spark).

Inputs: a prepared catalogue with photos (``prepare_catalog`` output), a judgments table, and
optionally click events. Outputs, per run id (``SKULENS_HOME/pairs/versions/<run_id>/``):

* ``image_text/``: one row per (photo, text view): the title, and an attribute sentence built
  from the attributes ("men navy blue shirts, casual, fall"). Only canonical products of each
  near-duplicate group (``dup_group``), so no duplicate photo is trained on twice.
* ``query_product/``: (query, product, weight, source) from judgments (weight = normalised grade)
  and from click events (weight = clicks + 2 x add-to-carts + 4 x purchases, ``source='click'``).
* ``hard_negatives/``: for image-text anchors, products of the same leaf category whose titles are
  lexically similar (MinHash-LSH) but that belong to another duplicate group; for queries, the
  query's own judged products with a low grade (human-judged irrelevant, yet retrieved for it).
* ``shards/<split>/shard-NNNNN.tar``: WebDataset-style tar shards, one ``<key>.jpg`` + ``<key>.json``
  sample per product, for the trainer.

Splits are deterministic functions of the seed: image-text pairs are split by ``dup_group`` (a
product and its near-duplicates never straddle splits); query-product pairs by query, and a
validation or test pair whose product also appears in training is dropped (counted as
``leak_dropped``), so neither queries nor products leak.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from skulens.settings import Settings
from skulens.storage.layout import pairs_store


@dataclass(frozen=True)
class PairOptions:
    """Parameters of ``build_pairs`` (recorded in the summary)."""

    seed: int = 13
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    negatives_per_anchor: int = 3
    negative_max_grade: float = 1.67
    negative_min_similarity: float = 0.3
    shards_per_split: int = 4

    def __post_init__(self) -> None:
        if not (0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction + test_fraction must be in [0, 1)")




def assign_split(key: F.Column, options: PairOptions) -> F.Column:
    """train / val / test from a seeded hash of ``key`` (stable across runs and machines)."""
    bucket = F.pmod(F.xxhash64(F.lit(options.seed), key), F.lit(10_000)) / 10_000.0
    return (F.when(bucket < options.test_fraction, "test")
            .when(bucket < options.test_fraction + options.val_fraction, "val")
            .otherwise("train"))


def attribute_sentence() -> F.Column:
    """"men navy blue shirts, casual, fall" from gender, colour, article type, usage, season."""
    attrs = F.col("attributes")
    head = F.concat_ws(" ", attrs["gender"], attrs["colour"], F.coalesce(attrs["article_type"], F.col("category_leaf")))
    return F.lower(F.concat_ws(", ", head, attrs["usage"], attrs["season"]))


def image_text_pairs(catalog: DataFrame, options: PairOptions) -> DataFrame:
    """(photo, text view) rows of canonical products with a valid photo."""
    products = catalog.where(F.col("image_uri").isNotNull() & F.col("is_canonical"))
    views = products.select(
        "product_id", "dup_group", "image_uri", "category_leaf",
        F.explode(F.array(
            F.struct(F.lit("title").alias("view"), F.col("title").alias("text")),
            F.struct(F.lit("attributes").alias("view"), attribute_sentence().alias("text")),
        )).alias("v"),
    ).select("product_id", "dup_group", "image_uri", "category_leaf", "v.view", "v.text")
    return (
        views.where(F.length(F.trim("text")) > 0)
        .withColumn("pair_id", F.concat_ws(":", "product_id", "view"))
        .withColumn("weight", F.lit(1.0))
        .withColumn("split", assign_split(F.col("dup_group"), options))
    )


def query_product_pairs(judgments: DataFrame, events: DataFrame | None, options: PairOptions) -> DataFrame:
    """(query, product, weight, source) from judgments and clicks, split by query without leaks."""
    bounds = judgments.agg(F.min("grade").alias("lo"), F.max("grade").alias("hi")).first()
    span = (bounds["hi"] - bounds["lo"]) or 1.0
    judged = judgments.select(
        "query", "product_id", "grade",
        ((F.col("grade") - F.lit(bounds["lo"])) / F.lit(span)).alias("weight"),
        F.lit("judgment").alias("source"),
    )
    pairs = judged
    if events is not None:
        clicks = (
            events.where(F.col("query").isNotNull())
            .groupBy("query", "product_id")
            .agg((F.sum((F.col("event_type") == "click").cast("double"))
                  + 2 * F.sum((F.col("event_type") == "add_to_cart").cast("double"))
                  + 4 * F.sum((F.col("event_type") == "purchase").cast("double"))).alias("weight"))
            .where(F.col("weight") > 0)
            .select("query", "product_id", F.lit(None).cast("double").alias("grade"), "weight",
                    F.lit("click").alias("source"))
        )
        pairs = pairs.unionByName(clicks)
    pairs = pairs.withColumn("split", assign_split(F.col("query"), options))
    train_products = pairs.where(F.col("split") == "train").select("product_id").distinct()
    leaking = pairs.where(F.col("split") != "train").join(train_products, "product_id", "left_semi")
    return pairs.join(leaking.select("query", "product_id", "source").withColumn("leak", F.lit(True)),
                      ["query", "product_id", "source"], "left") \
        .withColumn("leak", F.coalesce("leak", F.lit(False)))


def image_text_negatives(catalog: DataFrame, options: PairOptions) -> DataFrame:
    """Same leaf category, lexically similar title, another duplicate group; top-k per anchor."""
    from pyspark.sql.window import Window

    from skulens.spark.lsh import title_similarity_join

    products = catalog.where(F.col("image_uri").isNotNull() & F.col("is_canonical")) \
        .select("product_id", "dup_group", "title_norm", "category_leaf")
    pairs = title_similarity_join(products, options.negative_min_similarity, tables=5, seed=options.seed)
    candidates = pairs.where(
        (F.col("datasetA.category_leaf") == F.col("datasetB.category_leaf"))
        & (F.col("datasetA.dup_group") != F.col("datasetB.dup_group"))
    ).select(F.col("datasetA.product_id").alias("anchor"), F.col("datasetB.product_id").alias("negative_product_id"),
             "similarity")
    rank = F.row_number().over(Window.partitionBy("anchor").orderBy(F.desc("similarity"), "negative_product_id"))
    return (candidates.withColumn("rank", rank).where(F.col("rank") <= options.negatives_per_anchor)
            .select(F.lit("image_text").alias("kind"), "anchor", "negative_product_id", "similarity", "rank"))


def query_negatives(judgments: DataFrame, options: PairOptions) -> DataFrame:
    """A query's judged products with a low grade: retrieved for it, judged irrelevant."""
    return judgments.where(F.col("grade") <= options.negative_max_grade).select(
        F.lit("query_product").alias("kind"), F.col("query").alias("anchor"),
        F.col("product_id").alias("negative_product_id"), F.lit(None).cast("double").alias("similarity"),
        F.lit(None).cast("int").alias("rank"))


def write_shards(image_text: DataFrame, folder: Path, options: PairOptions) -> None:
    """Write WebDataset-style tar shards per split: ``<key>.jpg`` + ``<key>.json`` per product."""
    samples = image_text.groupBy("split", "product_id", "image_uri", "category_leaf").agg(
        F.map_from_entries(F.collect_list(F.struct("view", "text"))).alias("texts"))
    for split in ("train", "val", "test"):
        base = f"{str(folder).rstrip('/')}/{split}"
        fs, root = fsspec.core.url_to_fs(base)
        fs.makedirs(root, exist_ok=True)
        part = samples.where(F.col("split") == split) \
            .repartition(options.shards_per_split, "product_id").sortWithinPartitions("product_id")

        def write_partition(index: int, rows, base: str = base):  # noqa: ANN001 - Spark iterator
            # Executors write (and read photos) through fsspec: a local folder here, an object
            # store (s3://...) or any mounted filesystem on a cluster without a shared disk.
            import fsspec

            count = 0
            with fsspec.open(f"{base}/shard-{index:05d}.tar", "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
                for row in rows:
                    key = f"{row['product_id']}"
                    meta = json.dumps({"product_id": row["product_id"], "category": row["category_leaf"],
                                       "texts": dict(row["texts"])}, sort_keys=True).encode()
                    with fsspec.open(row["image_uri"], "rb") as photo:
                        image = photo.read()
                    for name, payload in ((f"{key}.jpg", image), (f"{key}.json", meta)):
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        info.mtime = 0  # deterministic archives
                        tar.addfile(info, io.BytesIO(payload))
                    count += 1
            yield count

        part.rdd.mapPartitionsWithIndex(write_partition).collect()  # only per-shard counts return


def _event_files(events: Path | str) -> list[str]:
    """The date-partitioned event files under ``events`` (a local folder or an fsspec URL)."""
    fs, root = fsspec.core.url_to_fs(str(events))
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    files = sorted(fs.glob(f"{root.rstrip('/')}/dt=*/*.parquet"))
    return files if protocol in ("file", "local") else [f"{protocol}://{f}" for f in files]


def run_build_pairs(spark: SparkSession, settings: Settings, run_id: str, *, prepared: Path,
                    judgments: Path, events: Path | None = None,
                    options: PairOptions | None = None) -> dict[str, Any]:
    """Build all pairs into the staged ``run_id``; return the summary (also ``summary.json``)."""
    options = options or PairOptions(shards_per_split=settings.spark.shards_per_split)
    catalog = spark.read.parquet(str(prepared / "catalog"))
    judged = spark.read.parquet(str(judgments))
    event_files = _event_files(events) if events else []
    clicks = spark.read.parquet(*event_files) if event_files else None
    staging = pairs_store(settings).begin(run_id)

    image_text_pairs(catalog, options).write.mode("overwrite").partitionBy("split") \
        .parquet(str(staging / "image_text"))
    query_product_pairs(judged, clicks, options).write.mode("overwrite").parquet(str(staging / "_query_product_all"))
    all_qp = spark.read.parquet(str(staging / "_query_product_all"))
    all_qp.where(~F.col("leak")).drop("leak").write.mode("overwrite").partitionBy("split") \
        .parquet(str(staging / "query_product"))
    image_text_negatives(catalog, options).unionByName(query_negatives(judged, options)) \
        .write.mode("overwrite").partitionBy("kind").parquet(str(staging / "hard_negatives"))

    image_text = spark.read.parquet(str(staging / "image_text"))
    write_shards(image_text, staging / "shards", options)
    query_product = spark.read.parquet(str(staging / "query_product"))
    negatives = spark.read.parquet(str(staging / "hard_negatives"))
    summary = {
        "run_id": run_id,
        "inputs": {"prepared": str(prepared), "judgments": str(judgments), "events": str(events) if clicks else None},
        "options": asdict(options),
        "image_text_by_split": _counts(image_text, "split"),
        "image_text_products_by_split": {
            r["split"]: r["n"]
            for r in image_text.groupBy("split").agg(F.countDistinct("product_id").alias("n")).collect()},
        "query_product_by_split": _counts(query_product, "split"),
        "query_product_by_source": _counts(query_product, "source"),
        "leak_dropped": all_qp.where(F.col("leak")).count(),
        "hard_negatives_by_kind": _counts(negatives, "kind"),
        "shards": sorted(str(p.relative_to(staging)) for p in (staging / "shards").glob("*/*.tar")),
        "path": str(staging),
    }
    shutil.rmtree(staging / "_query_product_all", ignore_errors=True)
    (staging / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _counts(frame: DataFrame, column: str) -> dict[str, int]:
    return {str(r[column]): int(r["count"]) for r in frame.groupBy(column).count().orderBy(column).collect()}


def publish(settings: Settings, run_id: str) -> Path:
    """Make a staged, gated run the current training pairs."""
    return pairs_store(settings).commit(run_id, keep=settings.datasets.keep_versions)
