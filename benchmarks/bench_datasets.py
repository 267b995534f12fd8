"""Benchmark: building canonical tables, at the bundled size and scaled up.

Writes docs/benchmarks/datasets_build.md (and .json). Each measurement runs in a fresh process so
that peak memory (ru_maxrss) belongs to that step alone.

    .venv/bin/python benchmarks/bench_datasets.py [--scale 10]

The scaled run replicates the real fashion rows with new product ids (labelled "replicated" in the
output): it measures throughput, not data quality.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from _report import machine_description, write_report

STEP = """
import json, resource, sys, time
from skulens.settings import load_settings
step = sys.argv[1]
settings = load_settings("local")
t0 = time.perf_counter()
if step == "fashion":
    from skulens.data.loaders import build_fashion; r = build_fashion(settings)
    rows = r.tables["products"].rows_in
elif step == "homedepot":
    from skulens.data.loaders import build_homedepot; r = build_homedepot(settings)
    rows = r.tables["judgments"].rows_in
elif step == "simulate":
    from skulens.data.catalog import read_table
    from skulens.data.simulate import SimulationConfig, simulate_events, write_events
    config = SimulationConfig()
    events = simulate_events(read_table(settings, "homedepot", "judgments"), config)
    write_events(events, settings.events_dir / "homedepot", config, source="bench")
    rows = events.num_rows
else:
    from skulens.data.loaders import import_catalog
    from skulens.data.mapping import load_mapping
    r = import_catalog(settings, load_mapping(sys.argv[2]))
    rows = r.tables["products"].rows_in
seconds = time.perf_counter() - t0
print(json.dumps({"rows": rows, "seconds": seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_step(home: Path, *args: str) -> dict:
    env = {**os.environ, "SKULENS_HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", STEP, *args], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def replicated_catalogue(work: Path, scale: int) -> Path:
    """Write the fashion rows `scale` times with new ids, plus a mapping pointing at the photos."""
    import csv

    from skulens.settings import load_settings

    fashion = load_settings("local").datasets.fashion_root
    source = work / f"fashion_x{scale}.csv"
    with (fashion / "styles.csv").open(newline="", encoding="utf-8") as inp, \
            source.open("w", newline="", encoding="utf-8") as out:
        reader = csv.reader(inp)
        writer = csv.writer(out)
        header = next(reader)
        writer.writerow([*header, "photo"])
        rows = list(reader)
        for copy in range(scale):
            for row in rows:
                writer.writerow([f"{row[0]}-r{copy}", *row[1:], f"{row[0]}.jpg"])
    mapping = work / "mapping.yaml"
    mapping.write_text(
        f"catalog: fashion-x{scale}\nsource: {source}\nimages_dir: {fashion / 'images'}\n"
        "columns: {product_id: id, title: productDisplayName, image: photo}\n"
        "category: {columns: [masterCategory, subCategory, articleType]}\n"
        "attributes: {gender: gender, colour: baseColour, article_type: articleType, season: season,"
        " year: year, usage: usage}\n"
        'title_template: "{gender} {colour} {article_type}"\n'
        "defaults: {}\n"
    )
    os.environ["SKULENS__DATASETS__MAX_REJECT_FRACTION"] = "1.0"
    return mapping


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10, help="replication factor of the scaled run")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        for step, label in (("fashion", "fashion products (real, 1x)"),
                            ("homedepot", "Home Depot judgments (real, 1x)"),
                            ("simulate", "simulate events (2,000 users, 14 days)")):
            results.append({"step": label, **run_step(home, step)})
        mapping = replicated_catalogue(Path(tmp), args.scale)
        results.append({"step": f"import fashion x{args.scale} (replicated rows, new ids)",
                        **run_step(home, "import", str(mapping))})
    machine = machine_description()
    command = f".venv/bin/python benchmarks/bench_datasets.py --scale {args.scale}"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Building canonical tables", "",
        f"- command: `{command}`", f"- machine: {machine}", f"- date: {when}",
        "- each step runs in a fresh process; peak RSS is that process's maximum resident memory",
        "", "| step | rows | seconds | rows/s | peak RSS (MB) |", "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['step']} | {r['rows']:,} | {r['seconds']:.2f} | "
                     f"{r['rows'] / r['seconds']:,.0f} | {r['peak_rss_mb']:,.0f} |")
    lines += ["", "Rows are input records (products, judgments, or events written). The replicated "
              "run measures throughput only; its rows are copies of the real ones with new ids."]
    write_report("datasets_build", lines, {"command": command, "machine": machine, "date": when, "results": results})


if __name__ == "__main__":
    main()
