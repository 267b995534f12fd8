"""A rebuild that embeds only what changed: docs/benchmarks/incremental_embed.md.

Embeds a catalogue's products with the model ``build_index`` would use (the champion two-tower, or
the text-encoder champion for a catalogue without photos) three times through
``skulens.retrieval.embed.embed_catalog``, the local runner ``build_index`` runs: in full; again
with nothing changed, given the first file as the published version's; and with a share of titles
edited. Checks that copied rows equal the full run's and that edited rows equal a fresh embedding
of the edited titles.

    .venv/bin/python benchmarks/bench_incremental_embed.py [--catalog homedepot] [--changed 0.01]
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import machine_description, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", default="homedepot")
    parser.add_argument("--changed", type=float, default=0.01, help="share of titles edited for the third run")
    args = parser.parse_args()

    import pyarrow as pa

    from skulens.data.catalog import read_table
    from skulens.pipelines.build_index import champion_for, local_mapper
    from skulens.retrieval.embed import embed_catalog, read_embeddings
    from skulens.settings import load_settings

    settings = load_settings()
    products = read_table(settings, args.catalog, "products")
    champion, text_only = champion_for(settings, products)
    version = f"{champion['name']}/{champion['version']}"

    def run(table: pa.Table, target: Path, previous: Path | None) -> dict:
        mapper = local_mapper(settings, champion, text_only=text_only)  # fresh: no title cache carried over
        started = time.perf_counter()
        summary = embed_catalog(table, mapper, target, model_version=version, previous=previous)
        return {**summary, "wall_s": round(time.perf_counter() - started, 1)}

    rng = np.random.default_rng(0)
    edited = np.sort(rng.choice(products.num_rows, max(1, int(args.changed * products.num_rows)), replace=False))
    titles = products.column("title").to_pylist()
    for i in edited:
        titles[i] = f"{titles[i]} (new edition)"
    changed = products.set_column(products.schema.get_field_index("title"), "title", pa.array(titles, pa.string()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        full = run(products, folder / "full.parquet", None)
        same = run(products, folder / "same.parquet", folder / "full.parquet")
        partial = run(changed, folder / "partial.parquet", folder / "full.parquet")
        run(changed.take(pa.array(edited)), folder / "fresh.parquet", None)
        _, v_full, _ = read_embeddings(folder / "full.parquet")
        _, v_same, _ = read_embeddings(folder / "same.parquet")
        _, v_part, _ = read_embeddings(folder / "partial.parquet")
        _, v_fresh, _ = read_embeddings(folder / "fresh.parquet")
    kept = np.setdiff1d(np.arange(products.num_rows), edited)
    checks = {"unchanged_rebuild_identical": bool(np.array_equal(v_same, v_full)),
              "copied_rows_identical": bool(np.array_equal(v_part[kept], v_full[kept])),
              "edited_rows_max_abs_diff_vs_fresh": float(np.abs(v_part[edited] - v_fresh).max())}
    speedup = round(full["wall_s"] / max(partial["wall_s"], 1e-3), 1)
    lines = [
        "# Incremental embedding: a rebuild embeds only what changed", "",
        f"`.venv/bin/python benchmarks/bench_incremental_embed.py --catalog {args.catalog} --changed {args.changed}` "
        f"on {datetime.date.today()} ({machine_description()}).", "",
        f"Catalogue `{args.catalog}`: {products.num_rows:,} products embedded by `{version}` "
        f"({'text-encoder champion, titles only' if text_only else 'champion two-tower, titles and photos'}), "
        "through `embed_catalog`, the local runner `build_index` runs.", "",
        "| run | embedded | copied | wall s |", "|---|---:|---:|---:|",
        f"| first build (nothing published) | {full['embedded']:,} | {full['reused']:,} | {full['wall_s']} |",
        f"| rebuild, nothing changed | {same['embedded']:,} | {same['reused']:,} | {same['wall_s']} |",
        f"| rebuild, {len(edited):,} titles edited ({args.changed:.0%}) | {partial['embedded']:,} | "
        f"{partial['reused']:,} | {partial['wall_s']} |", "",
        f"The rebuild with {args.changed:.0%} edited is {speedup}x faster than the first build. Copied vectors are "
        f"identical to the full run's ({checks['copied_rows_identical']}; unchanged rebuild identical: "
        f"{checks['unchanged_rebuild_identical']}); the edited rows differ from a fresh embedding of the edited "
        f"titles by at most {checks['edited_rows_max_abs_diff_vs_fresh']:.2e} (batches of other titles around "
        "them can move the last bits).",
    ]
    write_report("incremental_embed", lines, {"machine": machine_description(), "catalog": args.catalog,
                                              "model_version": version, "products": products.num_rows,
                                              "edited": len(edited), "runs": {"full": full, "unchanged": same,
                                                                              "edited": partial},
                                              "speedup": speedup, "checks": checks})


if __name__ == "__main__":
    main()
