"""Benchmark: the Spark jobs of the batch data layer at 1x and Nx the bundled fashion catalogue.

    .venv/bin/python benchmarks/bench_spark_jobs.py [--scales 1 10] [--master local[2]]

Writes docs/benchmarks/spark_jobs.md (and .json). The Nx catalogue REPLICATES the real rows (new
product ids, same titles and photos): it measures throughput and memory, and it is a worst case
for the near-duplicate stage, since every replica is a duplicate of its original. Each job runs in
a fresh process; peak memory is the largest resident set of that process and its JVM together,
sampled every 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime

from _report import machine_description, write_report

JOB = """
import json, sys, time
from pathlib import Path
from skulens.settings import load_settings
from skulens.spark.session import spark_session
settings = load_settings("local")
spark = spark_session(settings, "bench", master=sys.argv[3])
t0 = time.perf_counter()
if sys.argv[1] == "prepare":
    from skulens.spark.prepare_catalog import run_prepare_catalog, publish
    s = run_prepare_catalog(spark, settings, sys.argv[2], "bench")
    publish(settings, sys.argv[2], "bench")
    rows = s["rows_in"]; extra = {"duplicate_edges": s["duplicate_edges_by_kind"], "duplicates": s["duplicates"]}
else:
    from skulens.data.catalog import catalog_dir
    from skulens.spark.build_pairs import run_build_pairs
    from skulens.spark.prepare_catalog import prepared_store
    prepared = prepared_store(settings, sys.argv[2]).current()
    s = run_build_pairs(spark, settings, "bench", prepared=prepared,
                        judgments=catalog_dir(settings, "homedepot") / "judgments.parquet")
    rows = spark.read.parquet(str(prepared / "catalog")).count()
    extra = {"image_text_pairs": sum(s["image_text_by_split"].values()),
             "query_product_pairs": sum(s["query_product_by_split"].values())}
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0, **extra}))
spark.stop()
"""


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0


def run_job(env: dict[str, str], *args: str) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", JOB, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.5)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    started = time.perf_counter()
    out, _ = proc.communicate()
    wall = time.perf_counter() - started
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"job {args} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "wall_seconds_with_startup": wall, "peak_rss_mb": peak[0] / 2**20}


def replicate(settings, scale: int) -> str:  # noqa: ANN001
    """Publish catalogue fashion-x<scale>: the canonical fashion products, replicated."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from skulens.data.catalog import read_table
    from skulens.storage import VersionedDir

    products = read_table(settings, "fashion", "products")
    copies = []
    for k in range(scale):
        ids = pc.binary_join_element_wise(products.column("product_id"), pa.scalar(f"r{k}"), "-") if k else \
            products.column("product_id")
        copies.append(products.set_column(0, "product_id", ids))
    name = f"fashion-x{scale}"
    with VersionedDir(settings.tables_dir / name).build("bench") as staging:
        pq.write_table(pa.concat_tables(copies), staging / "products.parquet")
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()
    from skulens.data.loaders import build_fashion, build_homedepot
    from skulens.settings import load_settings

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SKULENS_HOME": tmp, "SPARK_LOCAL_IP": "127.0.0.1"}
        settings = load_settings("local", env=env)
        build_fashion(settings)
        build_homedepot(settings)
        for scale in args.scales:
            name = replicate(settings, scale)
            for job in ("prepare", "pairs"):
                label = f"{'prepare_catalog' if job == 'prepare' else 'build_pairs'} x{scale}"
                print(f"running {label} ...", flush=True)
                results.append({"job": label, "scale": scale, **run_job(env, job, name, args.master)})
    machine = machine_description()
    command = f".venv/bin/python benchmarks/bench_spark_jobs.py --scales {' '.join(map(str, args.scales))} " \
              f"--master '{args.master}'"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Spark jobs of the batch data layer", "",
             f"- command: `{command}`", f"- machine: {machine}", f"- Spark master: `{args.master}`", f"- date: {when}",
             "- input rows: products read by the job (`xN` = the real 42,874 fashion products replicated N times "
             "with new ids: a throughput test, and a worst case for deduplication)",
             "- seconds: the job itself, after the Spark session started; wall: the whole process",
             "- how to read these figures, and the sizing for 42M pairs on a cluster: `spark_sizing.md`",
             "", "| job | input rows | seconds | rows/s | wall (s) | peak RSS, driver + JVM (MB) | notes |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        notes = {k: v for k, v in r.items() if k not in
                 ("job", "scale", "rows", "seconds", "wall_seconds_with_startup", "peak_rss_mb")}
        lines.append(f"| {r['job']} | {r['rows']:,} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:,.0f} | "
                     f"{r['wall_seconds_with_startup']:.1f} | {r['peak_rss_mb']:,.0f} | {json.dumps(notes)} |")
    write_report("spark_jobs", lines, {"command": command, "machine": machine, "date": when, "results": results})


if __name__ == "__main__":
    main()
