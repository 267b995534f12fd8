"""Lexical near-neighbours of titles with MinHash-LSH (Jaccard similarity of word sets)."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def title_similarity_join(frame: DataFrame, min_similarity: float, *, tables: int, seed: int) -> DataFrame:
    """Self-join ``frame`` (with ``product_id`` and ``title_norm``) on title similarity.

    Returns ``datasetA``/``datasetB`` structs (all input columns) and ``similarity`` for the pairs
    whose Jaccard similarity is at least ``min_similarity`` (approximately: LSH may miss some).
    """
    from pyspark.ml.feature import HashingTF, MinHashLSH, RegexTokenizer

    tokens = RegexTokenizer(inputCol="title_norm", outputCol="tokens", pattern=r"\s+").transform(frame)
    vectors = HashingTF(inputCol="tokens", outputCol="features", binary=True, numFeatures=1 << 18).transform(tokens)
    # MinHash needs at least one non-zero entry per vector.
    vectors = vectors.where(F.size("tokens") > 0)
    model = MinHashLSH(inputCol="features", outputCol="hashes", numHashTables=tables, seed=seed).fit(vectors)
    pairs = model.approxSimilarityJoin(vectors, vectors, 1.0 - min_similarity, distCol="distance")
    return pairs.withColumn("similarity", 1.0 - F.col("distance"))
