"""Spark entry point: ``prepare_catalog`` for one catalogue (local or on a cluster).

    python spark_jobs/prepare_catalog.py --catalog fashion --run-id r1 [--master spark://host:7077]
    spark-submit spark_jobs/prepare_catalog.py --catalog fashion --run-id r1

Stages the output under SKULENS_HOME/prepared/<catalog>/versions/.staging-<run-id>; ``--publish``
runs the GX gate and publishes it (what the catalog_ingest DAG does).
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default="fashion", help="catalogue under SKULENS_HOME/tables")
    parser.add_argument("--run-id", required=True, help="re-running a run id replaces its output")
    parser.add_argument("--master", default=None, help="Spark master URL (default: spark.master from config)")
    parser.add_argument("--publish", action="store_true", help="run the GX gate, then publish")
    args = parser.parse_args()

    from skulens.quality.datasets import gate_prepared
    from skulens.settings import load_settings
    from skulens.spark.prepare_catalog import prepared_store, publish, run_prepare_catalog
    from skulens.spark.session import spark_session

    settings = load_settings()
    spark = spark_session(settings, "prepare_catalog", master=args.master)
    summary = run_prepare_catalog(spark, settings, args.catalog, args.run_id)
    if args.publish:
        staged = prepared_store(settings, args.catalog).staging_path(args.run_id)
        summary["gx"] = gate_prepared(settings, staged).to_dict()
        summary["published"] = str(publish(settings, args.catalog, args.run_id))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
