"""Spark jobs of the batch data layer (reader -> transforms -> writer), local or on a cluster.

The functions here take and return Spark DataFrames and never ``collect()`` a dataset to the
driver; only small aggregates (counts for reports) come back. The thin entry points in
``spark_jobs/`` parse arguments and call them.
"""
