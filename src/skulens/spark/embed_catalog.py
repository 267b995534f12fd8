"""The batch-embedding mapper (:class:`skulens.retrieval.embed.EmbeddingMapper`) inside Spark.

Reader: the canonical ``products`` Parquet; mapper: ``mapInPandas``, each Python worker loading
the bundle (and the served ONNX image tower) once and mapping its partitions batch by batch;
writer: Parquet with the same columns as the local runner (vectors as float arrays), so
:func:`skulens.retrieval.embed.read_embeddings` reads either. On a cluster the bundle and photos
must be on storage every executor reads (a shared path or an object store mounted as one).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

OUTPUT = T.StructType([
    T.StructField("product_id", T.StringType(), False),
    T.StructField("shard_key", T.StringType(), True),
    T.StructField("has_image", T.BooleanType(), False),
    T.StructField("title_vec", T.ArrayType(T.FloatType()), False),
    T.StructField("image_vec", T.ArrayType(T.FloatType()), False),
    T.StructField("fused_vec", T.ArrayType(T.FloatType()), False),
])


def embed_partitions(bundle: str, image_onnx: str | None, batch_size: int):  # noqa: ANN201
    """The ``mapInPandas`` function: loads the model once per worker, maps every batch."""

    def run(frames: Iterator[Any]) -> Iterator[Any]:
        import pandas as pd

        from skulens.models.two_tower import TwoTower
        from skulens.retrieval.embed import EmbeddingMapper

        tower = TwoTower.load(Path(bundle), cache_dir=Path(bundle).parent / ".cache")
        mapper = EmbeddingMapper(tower, Path(image_onnx) if image_onnx else None)
        for frame in frames:
            for start in range(0, len(frame), batch_size):
                part = frame.iloc[start:start + batch_size]
                out = mapper({"product_id": part["product_id"].tolist(), "title": part["title"].fillna("").tolist(),
                              "image_uri": [u if isinstance(u, str) else None for u in part["image_uri"]],
                              "shard_key": part["shard_key"].tolist()})
                yield pd.DataFrame({"product_id": out["product_id"], "shard_key": out["shard_key"],
                                    "has_image": out["has_image"], "title_vec": list(out["title_vec"]),
                                    "image_vec": list(out["image_vec"]), "fused_vec": list(out["fused_vec"])})
    return run


def embed_with_spark(spark: SparkSession, products: Path, bundle: Path, target: Path, *, model_version: str,
                     image_onnx: Path | None = None, shard_level: int = 0, batch_size: int = 256,
                     partitions: int | None = None) -> dict[str, Any]:
    """Embed every product of ``products`` (Parquet) into ``target`` (a Parquet folder)."""
    started = time.perf_counter()
    frame: DataFrame = spark.read.parquet(str(products)).select(
        "product_id", "title", "image_uri",
        F.element_at("category_path", shard_level + 1).alias("shard_key"))
    if partitions:
        frame = frame.repartition(partitions)
    embedded = frame.mapInPandas(embed_partitions(str(bundle), str(image_onnx) if image_onnx else None, batch_size),
                                 OUTPUT)
    embedded.write.mode("overwrite").parquet(str(target))
    stats = spark.read.parquet(str(target)).agg(F.count("*").alias("n"),
                                                F.sum(F.col("has_image").cast("int")).alias("img")).first()
    summary = {"model_version": model_version, "products": int(stats["n"]), "with_image": int(stats["img"] or 0),
               "runner": "spark", "seconds": round(time.perf_counter() - started, 1)}
    (Path(target) / "_skulens.json").write_text(json.dumps(summary), encoding="utf-8")
    return summary
