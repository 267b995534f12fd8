"""Spark Structured Streaming job: the service's landing zone -> events table, dead letters,
windowed aggregates and online features (domain code in ``skulens.streaming``).

    spark-submit spark_jobs/stream_events.py [--once]     # or: skulens stream run [--once]
"""

from __future__ import annotations

import sys

from skulens.cli.app import main

if __name__ == "__main__":
    sys.argv = ["skulens", "stream", "run", *sys.argv[1:]]
    main()
