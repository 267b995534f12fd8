"""``prepare_catalog``: clean a catalogue's products for training and indexing (Spark).

Reads the catalogue's canonical ``products`` table and writes, per run id, a prepared catalogue:

* text normalisation: ``title_norm`` (lower case, letters and digits only, single spaces);
* category columns: ``category`` ("A > B > C"), ``category_top``, ``category_leaf``;
* photo validation (decodable, at least ``min_side`` px, RGB) with a rejects table; a product whose
  photo fails keeps its row with ``image_uri`` set to null;
* near-duplicates, within the same leaf category: products with photos are duplicates when their
  perceptual hashes differ in <= ``photo_max_distance`` bits and their colour signatures in <=
  ``colour_max_diff`` per channel (see :mod:`skulens.spark.photos`); products without photos when their titles
  have MinHash-LSH Jaccard similarity >= ``title_similarity``. Titles alone are not used between
  products that have photos: in real catalogues one title often names many distinct variants
  (the fashion data has 82 different "Lucera Women Silver Earrings"), and the photo tells them
  apart. ``dup_group`` is the smallest product id of each connected group; ``is_canonical``
  marks it.

Output (``SKULENS_HOME/prepared/<catalog>/versions/<run_id>/``): ``catalog/`` partitioned by
``category_top``, ``photo_rejects/``, ``duplicates/`` (the edges) and ``summary.json``. The run is
staged, not published: the pipeline publishes it after its quality gate (:func:`publish`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from skulens.settings import Settings
from skulens.spark.graph import connected_components
from skulens.spark.lsh import title_similarity_join
from skulens.spark.photos import PHOTO_SCHEMA, photo_checker
from skulens.storage.layout import prepared_store


@dataclass(frozen=True)
class PrepareOptions:
    """Parameters of ``prepare_catalog`` (recorded in the summary)."""

    min_side: int = 64
    title_similarity: float = 0.8
    photo_max_distance: int = 2
    colour_max_diff: int = 8
    lsh_tables: int = 5
    seed: int = 17




def normalise_text(column: str) -> F.Column:
    """Lower case, letters and digits only, single spaces."""
    return F.trim(F.regexp_replace(F.lower(F.col(column)), r"[^\p{L}\p{N}]+", " "))


def prepare(spark: SparkSession, products: DataFrame, options: PrepareOptions) -> dict[str, DataFrame]:
    """The transformations of the job; returns the ``catalog``, ``photo_rejects`` and ``duplicates`` frames."""
    base = (
        products
        .withColumn("title_norm", normalise_text("title"))
        .withColumn("category", F.concat_ws(" > ", "category_path"))
        .withColumn("category_top", F.coalesce(F.element_at("category_path", 1), F.lit("(none)")))
        .withColumn("category_leaf", F.coalesce(F.element_at("category_path", -1), F.lit("(none)")))
    )
    with_photo = base.where(F.col("image_uri").isNotNull()).select("product_id", "image_uri")
    photos = with_photo.mapInPandas(photo_checker(options.min_side), PHOTO_SCHEMA).cache()
    photo_rejects = (
        photos.where(F.col("photo_rule").isNotNull())
        .join(with_photo, "product_id")
        .select("product_id", "image_uri", F.col("photo_rule").alias("rule"), F.col("photo_message").alias("message"))
    )
    good = photos.where(F.col("photo_rule").isNull()).select("product_id", "photo_width", "photo_height", "phash",
                                                             "colour_sig")
    catalog = (
        base.join(good, "product_id", "left")
        # A product whose photo failed validation keeps its row, without a photo.
        .withColumn("image_uri", F.when(F.col("phash").isNotNull(), F.col("image_uri")))
    ).cache()

    # Materialised once: the edges feed the duplicate groups and are written out, and the LSH join
    # behind them is the most expensive step of the job.
    edges = _title_edges(catalog, options).unionByName(_photo_edges(catalog, options)).localCheckpoint()
    nodes = catalog.select(F.col("product_id").alias("id"))
    groups = connected_components(nodes, edges.select("src", "dst"))
    catalog = (
        catalog.join(groups.withColumnRenamed("id", "product_id").withColumnRenamed("component", "dup_group"),
                     "product_id", "left")
        .withColumn("dup_group", F.coalesce("dup_group", "product_id"))
        .withColumn("is_canonical", F.col("dup_group") == F.col("product_id"))
    )
    return {"catalog": catalog, "photo_rejects": photo_rejects, "duplicates": edges}


def _title_edges(catalog: DataFrame, options: PrepareOptions) -> DataFrame:
    # Only products without a photo: with photos, the photo decides (see the module docstring).
    photo_less = catalog.where(F.col("phash").isNull()).select("product_id", "title_norm", "category_leaf")
    # Exact repeats first, by a cheap group-by: each joins its group's smallest id (a star, not a
    # clique), and only one representative per distinct title goes into the LSH join. Without this,
    # a title repeated n times makes n^2 candidate pairs in every hash table.
    groups = photo_less.groupBy("category_leaf", "title_norm").agg(
        F.min("product_id").alias("rep"), F.collect_list("product_id").alias("members"))
    exact = (groups.select("rep", F.explode("members").alias("member")).where(F.col("rep") != F.col("member"))
             .select(F.col("rep").alias("src"), F.col("member").alias("dst"), F.lit("title").alias("kind"),
                     F.lit(1.0).alias("similarity")))
    reps = groups.select(F.col("rep").alias("product_id"), "title_norm", "category_leaf")
    pairs = title_similarity_join(reps, options.title_similarity, tables=options.lsh_tables, seed=options.seed)
    near = (
        pairs.where(
            (F.col("datasetA.product_id") < F.col("datasetB.product_id"))
            & (F.col("datasetA.category_leaf") == F.col("datasetB.category_leaf"))
        )
        .select(F.col("datasetA.product_id").alias("src"), F.col("datasetB.product_id").alias("dst"),
                F.lit("title").alias("kind"), "similarity")
    )
    return exact.unionByName(near)


def _photo_edges(catalog: DataFrame, options: PrepareOptions) -> DataFrame:
    # Pigeonhole: two 64-bit hashes within d bits agree exactly on at least one of d+1 bands.
    bands = options.photo_max_distance + 1
    width = -(-64 // bands)
    hashed = catalog.where(F.col("phash").isNotNull()).select("product_id", "phash", "colour_sig", "category_leaf")
    banded = hashed.select(
        "product_id", "phash", "colour_sig", "category_leaf",
        F.explode(F.array(*[
            F.struct(F.lit(b).alias("band"),
                     F.shiftrightunsigned("phash", b * width).bitwiseAND((1 << width) - 1).alias("value"))
            for b in range(bands)
        ])).alias("b"),
    ).select("product_id", "phash", "colour_sig", "category_leaf", "b.band", "b.value")
    left, right = banded.alias("l"), banded.alias("r")
    pairs = (
        left.join(right, (F.col("l.band") == F.col("r.band")) & (F.col("l.value") == F.col("r.value"))
                  & (F.col("l.product_id") < F.col("r.product_id"))
                  & (F.col("l.category_leaf") == F.col("r.category_leaf")))
        .select(F.col("l.product_id").alias("src"), F.col("r.product_id").alias("dst"),
                F.bit_count(F.col("l.phash").bitwiseXOR(F.col("r.phash"))).alias("distance"),
                F.array_max(F.zip_with("l.colour_sig", "r.colour_sig", lambda a, b: F.abs(a - b))).alias("colour_diff"))
        .where((F.col("distance") <= options.photo_max_distance) & (F.col("colour_diff") <= options.colour_max_diff))
        .dropDuplicates(["src", "dst"])
    )
    return pairs.select("src", "dst", F.lit("photo").alias("kind"),
                        (1.0 - F.col("distance") / 64.0).alias("similarity"))


def run_prepare_catalog(spark: SparkSession, settings: Settings, catalog: str, run_id: str,
                        options: PrepareOptions | None = None) -> dict[str, Any]:
    """Run the job on the catalogue's current products and stage the output under ``run_id``.

    Returns the summary (also written as ``summary.json``); call :func:`publish` after the gate.
    """
    from skulens.data.catalog import catalog_dir

    options = options or PrepareOptions()
    source = catalog_dir(settings, catalog) / "products.parquet"
    products = spark.read.parquet(str(source))
    frames = prepare(spark, products, options)
    staging = prepared_store(settings, catalog).begin(run_id)
    frames["catalog"].write.mode("overwrite").partitionBy("category_top").parquet(str(staging / "catalog"))
    frames["photo_rejects"].write.mode("overwrite").parquet(str(staging / "photo_rejects"))
    frames["duplicates"].write.mode("overwrite").parquet(str(staging / "duplicates"))

    written = spark.read.parquet(str(staging / "catalog"))
    rejects = spark.read.parquet(str(staging / "photo_rejects"))
    dups = spark.read.parquet(str(staging / "duplicates"))
    counts = written.agg(
        F.count("*").alias("products"),
        F.sum(F.col("image_uri").isNotNull().cast("int")).alias("with_valid_photo"),
        F.sum((~F.col("is_canonical")).cast("int")).alias("duplicates"),
        F.countDistinct("dup_group").alias("dup_groups"),
    ).first().asDict()
    summary = {
        "catalog": catalog,
        "run_id": run_id,
        "source": str(source),
        "options": asdict(options),
        "rows_in": products.count(),
        **{k: int(v or 0) for k, v in counts.items()},
        "photo_rejects_by_rule": {r["rule"]: r["count"] for r in rejects.groupBy("rule").count().collect()},
        "duplicate_edges_by_kind": {r["kind"]: r["count"] for r in dups.groupBy("kind").count().collect()},
        "path": str(staging),
    }
    (staging / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def publish(settings: Settings, catalog: str, run_id: str) -> Path:
    """Make a staged, gated run the current prepared catalogue."""
    return prepared_store(settings, catalog).commit(run_id, keep=settings.datasets.keep_versions)
