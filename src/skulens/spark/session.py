"""Build a SparkSession from the configuration (``spark.master``: local[N] here, a cluster there)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from skulens.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_session(settings: Settings, app_name: str | None = None,
                  master: str | None = None) -> SparkSession:
    """Get or create the SparkSession for a job; ``master`` overrides the configured one."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Executors run Python UDFs (photo checks) with the same interpreter as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master or settings.spark.master)
        .appName(app_name or settings.spark.app_name)
        .config("spark.driver.memory", settings.spark.driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        # Parquet written by Spark keeps microsecond UTC timestamps like the canonical tables.
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    for key, value in settings.spark.conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    if session.sparkContext.getCheckpointDir() is None:
        # Reliable checkpoints (iterative jobs cut their lineage here); on a cluster this must be
        # shared storage every executor reaches (spark.checkpoint_dir).
        folder = settings.spark.checkpoint_dir or str(settings.home / "spark" / "checkpoints")
        session.sparkContext.setCheckpointDir(folder)
    return session

