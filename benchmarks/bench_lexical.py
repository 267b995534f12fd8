"""Benchmark: bm25s against tantivy as the lexical engine, on the same real Home Depot data.

Writes docs/benchmarks/lexical.md (and .json): index build time, single-query latency (p50/p95)
and relevance (nDCG@10, recall@100 with ir-measures) over the full catalogue of 45,782 product
titles for a seeded sample of real queries with human grades. Both engines index the title only
(the Home Depot products have no attributes) with their default English analysis.

    .venv/bin/python benchmarks/bench_lexical.py [--queries 2000]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime

import numpy as np
from _report import machine_description, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()

    import tantivy

    from skulens.data.catalog import read_table
    from skulens.evaluation import evaluate
    from skulens.retrieval.lexical import BM25Index, LexicalConfig
    from skulens.settings import load_settings
    from skulens.training.reranker import grade_to_rel

    settings = load_settings("local")
    products = read_table(settings, "homedepot", "products")
    judgments = read_table(settings, "homedepot", "judgments").to_pylist()
    qrels: dict[str, dict[str, int]] = {}
    for j in judgments:
        qrels.setdefault(j["query"], {})[j["product_id"]] = grade_to_rel(j["grade"])
    rng = np.random.default_rng(0)
    queries = sorted(rng.choice(sorted(qrels), min(args.queries, len(qrels)), replace=False).tolist())
    qrels = {q: qrels[q] for q in queries}
    ids, titles = products.column("product_id").to_pylist(), products.column("title").to_pylist()

    results = {}
    for label, stemmer in (("bm25s (no stemming)", None), ("bm25s + Snowball English stemmer", "english")):
        t = time.perf_counter()
        bm = BM25Index.build(products, LexicalConfig(boosts={"title": 1.0}, stemmer=stemmer))
        build_bm = time.perf_counter() - t
        run, lat = {}, []
        for q in queries:
            t = time.perf_counter()
            run[q] = dict(bm.search(q, k=100))
            lat.append(time.perf_counter() - t)
        results[label] = {"build_s": build_bm, "latencies": lat, "run": run}

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw")
    sb.add_text_field("title", stored=False, tokenizer_name="en_stem")
    schema = sb.build()
    t = time.perf_counter()
    index = tantivy.Index(schema)
    writer = index.writer(heap_size=100_000_000, num_threads=1)
    for pid, title in zip(ids, titles, strict=True):
        writer.add_document(tantivy.Document(id=pid, title=title))
    writer.commit()
    index.reload()
    build_tv = time.perf_counter() - t
    searcher = index.searcher()
    run, lat = {}, []
    for q in queries:
        t = time.perf_counter()
        words = [w.lower() for w in re.findall(r"\w+", q)]  # no syntax characters or upper-case operators
        hits = searcher.search(index.parse_query(" ".join(words), ["title"]), 100).hits if words else []
        run[q] = {searcher.doc(addr)["id"][0]: float(score) for score, addr in hits}
        lat.append(time.perf_counter() - t)
    results["tantivy (en_stem)"] = {"build_s": build_tv, "latencies": lat, "run": run}

    rows = []
    for name, r in results.items():
        m = evaluate(qrels, r["run"], ["nDCG@10", "R@100"])
        rows.append({"engine": name, "build_s": r["build_s"], "p50_ms": float(np.median(r["latencies"]) * 1000),
                     "p95_ms": float(np.percentile(r["latencies"], 95) * 1000), **m})
    lines = [
        "# Lexical engine: bm25s vs tantivy on the Home Depot catalogue", "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine_description()}.",
        f"Command: `.venv/bin/python benchmarks/bench_lexical.py {' '.join(sys.argv[1:])}`".rstrip(), "",
        f"{len(ids):,} product titles; {len(queries):,} real queries (seeded sample) with human grades as qrels "
        "(graded 0-6 from the 1-3 scale). bm25s: `skulens.retrieval.lexical.BM25Index` (English stop words "
        "removed, Lucene BM25, with and without PyStemmer). tantivy 0.27: `en_stem` tokenizer, BM25, default "
        "query parser on the lower-cased words.", "",
        "| engine | build s | p50 ms / query | p95 ms / query | nDCG@10 | recall@100 |", "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['engine']} | {r['build_s']:.2f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['nDCG@10']:.4f} | "
              f"{r['R@100']:.4f} |" for r in rows]
    best = max(rows, key=lambda r: r["nDCG@10"])
    fastest = min(rows, key=lambda r: r["p50_ms"])
    lines += ["", f"Best relevance: {best['engine']} (nDCG@10 {best['nDCG@10']:.4f}); fastest: {fastest['engine']} "
              f"(p50 {fastest['p50_ms']:.2f} ms). The choice and what follows from it: docs/retrieval.md."]
    write_report("lexical", lines, {"machine": machine_description(), "command": sys.argv, "rows": rows})


if __name__ == "__main__":
    main()
