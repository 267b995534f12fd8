"""Spark entry point: ``build_pairs`` (image-text, query-product, hard negatives, shards).

    python spark_jobs/build_pairs.py --run-id r1 [--master spark://host:7077] [--publish]

Reads the current prepared fashion catalogue, the homedepot judgments and (if any) its events.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True, help="re-running a run id replaces its output")
    parser.add_argument("--catalog", default="fashion", help="prepared catalogue with photos")
    parser.add_argument("--queries", default="homedepot", help="catalogue with judgments and events")
    parser.add_argument("--master", default=None, help="Spark master URL (default: spark.master from config)")
    parser.add_argument("--seed", type=int, default=13, help="split and sampling seed")
    parser.add_argument("--publish", action="store_true", help="run the GX gates, then publish")
    args = parser.parse_args()

    from skulens.data.catalog import catalog_dir
    from skulens.quality.datasets import gate_pairs
    from skulens.settings import load_settings
    from skulens.spark.build_pairs import PairOptions, pairs_store, publish, run_build_pairs
    from skulens.spark.prepare_catalog import prepared_store
    from skulens.spark.session import spark_session
    from skulens.storage import VersionedDir

    settings = load_settings()
    prepared = prepared_store(settings, args.catalog).current()
    if prepared is None:
        raise SystemExit(f"no published prepared catalogue for {args.catalog}: run prepare_catalog --publish first")
    tables = catalog_dir(settings, args.queries)
    summary = run_build_pairs(
        spark_session(settings, "build_pairs", master=args.master), settings, args.run_id, prepared=prepared,
        judgments=tables / "judgments.parquet", events=VersionedDir(settings.events_dir / args.queries).current(),
        options=PairOptions(seed=args.seed))
    if args.publish:
        summary["gx"] = [r.to_dict() for r in gate_pairs(settings, pairs_store(settings).staging_path(args.run_id),
                                                         prepared=prepared, products=tables / "products.parquet")]
        summary["published"] = str(publish(settings, args.run_id))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
