"""Lexical near-neighbours of titles with MinHash-LSH (Jaccard similarity of word sets), blocked.

Spark's ``approxSimilarityJoin`` joins the whole catalogue on hash buckets and would leave the
category test to a filter after the join: on a real catalogue most candidate pairs then cross
categories and are thrown away. Here the join key is (block, hash table, bucket), so only titles of
the same block (the leaf category) are ever paired, and the exact Jaccard similarity of each
candidate pair is computed from its token sets.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def title_similarity_join(frame: DataFrame, min_similarity: float, *, tables: int, seed: int,
                          block: str = "category_leaf") -> DataFrame:
    """Pairs of rows of ``frame`` (``product_id``, ``title_norm``, ``block``) in the same ``block``
    whose titles have Jaccard similarity >= ``min_similarity`` (LSH may miss some).

    Returns ``datasetA``/``datasetB`` structs (all input columns) and ``similarity``, both orders of
    each pair (as Spark's self-join does), never a row with itself."""
    from pyspark.ml.feature import HashingTF, MinHashLSH, RegexTokenizer
    from pyspark.ml.functions import vector_to_array

    columns = frame.columns
    tokens = RegexTokenizer(inputCol="title_norm", outputCol="tokens", pattern=r"\s+").transform(frame)
    tokens = tokens.withColumn("tokens", F.array_distinct("tokens")).where(F.size("tokens") > 0)
    vectors = HashingTF(inputCol="tokens", outputCol="features", binary=True, numFeatures=1 << 18).transform(tokens)
    hashed = MinHashLSH(inputCol="features", outputCol="hashes", numHashTables=tables, seed=seed) \
        .fit(vectors).transform(vectors)
    buckets = hashed.select(*columns, "tokens", F.posexplode("hashes").alias("table", "hash")) \
        .withColumn("bucket", vector_to_array("hash")[0]).drop("hash")
    a, b = buckets.alias("a"), buckets.alias("b")
    candidates = (
        a.join(b, (F.col(f"a.{block}") == F.col(f"b.{block}")) & (F.col("a.table") == F.col("b.table"))
               & (F.col("a.bucket") == F.col("b.bucket")) & (F.col("a.product_id") < F.col("b.product_id")))
        .select(F.struct(*[F.col(f"a.{c}").alias(c) for c in columns]).alias("datasetA"),
                F.struct(*[F.col(f"b.{c}").alias(c) for c in columns]).alias("datasetB"),
                F.col("a.tokens").alias("ta"), F.col("b.tokens").alias("tb"))
        .dropDuplicates(["datasetA", "datasetB"])
    )
    scored = candidates.withColumn(
        "similarity", F.size(F.array_intersect("ta", "tb")) / F.size(F.array_union("ta", "tb"))) \
        .where(F.col("similarity") >= min_similarity).drop("ta", "tb")
    flipped = scored.select(F.col("datasetB").alias("datasetA"), F.col("datasetA").alias("datasetB"), "similarity")
    return scored.unionByName(flipped)
