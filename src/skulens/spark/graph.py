"""Connected components of a small-degree graph in Spark (for near-duplicate groups).

Label propagation: every node starts with its own id as label and takes the smallest label among
its neighbours until nothing changes. A run that has not converged after ``max_iterations`` rounds
fails loudly (:class:`NotConverged`, with the number of labels still changing) instead of returning
half-merged groups. Each round's labels are checkpointed reliably (``SparkContext.checkpoint`` to
the session's checkpoint folder, which a cluster keeps on shared storage) when one is set, so an
executor lost mid-run does not lose the lineage; without one, a local checkpoint.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


class NotConverged(RuntimeError):
    """Label propagation still changed labels after its last allowed round."""


def connected_components(nodes: DataFrame, edges: DataFrame, max_iterations: int = 50) -> DataFrame:
    """``nodes(id)``, ``edges(src, dst)`` -> ``(id, component)`` with component = smallest id."""
    spark = nodes.sparkSession
    reliable = spark.sparkContext.getCheckpointDir() is not None

    def cut(frame: DataFrame) -> DataFrame:
        # Cut the lineage each round: otherwise the query plan grows with every iteration.
        return frame.checkpoint(eager=True) if reliable else frame.localCheckpoint(eager=True)

    undirected = edges.select("src", "dst").union(edges.select(F.col("dst").alias("src"), F.col("src").alias("dst")))
    undirected = undirected.where(F.col("src") != F.col("dst")).distinct().cache()
    labels = cut(nodes.select("id", F.col("id").alias("component")))
    if undirected.isEmpty():
        return labels
    changed = 0
    for _ in range(max_iterations):
        proposed = (
            undirected.join(labels, undirected.src == labels.id)
            .groupBy("dst").agg(F.min("component").alias("proposed"))
        )
        updated = cut(
            labels.join(proposed, labels.id == proposed.dst, "left")
            .select("id", F.least("component", F.coalesce("proposed", "component")).alias("component"))
        )
        changed = updated.join(labels.withColumnRenamed("component", "old"), "id") \
            .where(F.col("component") != F.col("old")).count()
        labels = updated
        if changed == 0:
            undirected.unpersist()
            return labels
    undirected.unpersist()
    raise NotConverged(f"near-duplicate groups did not converge in {max_iterations} rounds of label propagation "
                       f"({changed} labels still changed in the last one); raise max_iterations or check the "
                       "duplicate edges for an unexpectedly long chain")
