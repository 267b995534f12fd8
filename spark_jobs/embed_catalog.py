"""Spark entry point: embed a catalogue with the champion (or a given) embedder bundle.

    python spark_jobs/embed_catalog.py --target /data/embeddings [--catalog fashion] [--bundle DIR]
        [--image-onnx FILE] [--master spark://host:7077] [--partitions 64]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, type=Path, help="output Parquet folder")
    parser.add_argument("--catalog", default=None, help="catalogue (default: retrieval.catalog)")
    parser.add_argument("--bundle", type=Path, default=None, help="embedder bundle (default: the champion)")
    parser.add_argument("--image-onnx", type=Path, default=None, help="served image tower (default: champion's)")
    parser.add_argument("--master", default=None, help="Spark master URL (default: spark.master from config)")
    parser.add_argument("--partitions", type=int, default=None)
    args = parser.parse_args()

    from skulens.data.catalog import catalog_dir
    from skulens.settings import load_settings
    from skulens.spark.embed_catalog import embed_with_spark
    from skulens.spark.session import spark_session
    from skulens.tracking.registry import embedder_files, version_artifacts

    settings = load_settings()
    catalog = args.catalog or settings.retrieval.catalog
    bundle, image_onnx, model_version = args.bundle, args.image_onnx, "bundle"
    if bundle is None:
        champion = version_artifacts(settings, "embedder")
        bundle, served_image = embedder_files(champion)
        model_version = f"{champion['name']}/{champion['version']}"
        image_onnx = image_onnx or served_image
    summary = embed_with_spark(spark_session(settings, "embed_catalog", master=args.master),
                               catalog_dir(settings, catalog) / "products.parquet", bundle, args.target,
                               model_version=model_version, image_onnx=image_onnx,
                               shard_level=settings.retrieval.shard_level, partitions=args.partitions)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
