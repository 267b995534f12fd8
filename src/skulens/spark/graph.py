"""Connected components of a small-degree graph in Spark (for near-duplicate groups).

Label propagation: every node starts with its own id as label and takes the smallest label among
its neighbours until nothing changes (at most ``max_iterations`` rounds). Only the number of
changed labels comes back to the driver each round.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def connected_components(nodes: DataFrame, edges: DataFrame, max_iterations: int = 20) -> DataFrame:
    """``nodes(id)``, ``edges(src, dst)`` -> ``(id, component)`` with component = smallest id."""
    undirected = edges.select("src", "dst").union(edges.select(F.col("dst").alias("src"), F.col("src").alias("dst")))
    undirected = undirected.where(F.col("src") != F.col("dst")).distinct().cache()
    labels = nodes.select("id", F.col("id").alias("component")).localCheckpoint()
    if undirected.isEmpty():
        return labels
    for _ in range(max_iterations):
        proposed = (
            undirected.join(labels, undirected.src == labels.id)
            .groupBy("dst").agg(F.min("component").alias("proposed"))
        )
        updated = (
            labels.join(proposed, labels.id == proposed.dst, "left")
            .select("id", F.least("component", F.coalesce("proposed", "component")).alias("component"))
            # Cut the lineage each round: otherwise the query plan grows with every iteration.
            .localCheckpoint()
        )
        changed = updated.join(labels.withColumnRenamed("component", "old"), "id") \
            .where(F.col("component") != F.col("old")).limit(1).count()
        labels = updated
        if changed == 0:
            break
    undirected.unpersist()
    return labels
