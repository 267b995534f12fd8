"""Benchmark: bm25s against tantivy as the lexical engine, on the same real Home Depot data.

Writes docs/benchmarks/lexical.md (and .json): index build time, single-query latency (p50/p95)
and relevance (nDCG@10, recall@100 with ir-measures) over the full catalogue of 45,782 product
titles for a seeded sample of real queries with human grades. Both engines index the title only
(the Home Depot products have no attributes) with their default English analysis.

    .venv/bin/python benchmarks/bench_lexical.py [--queries 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

import numpy as np
from _report import machine_description, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()


    import bm25s
    import Stemmer

    from skulens.data.catalog import read_table
    from skulens.evaluation import evaluate
    from skulens.evaluation.rerankers import grade_to_rel
    from skulens.retrieval.lexical import BM25Index, LexicalConfig
    from skulens.settings import load_settings

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
        stem = Stemmer.Stemmer(stemmer).stemWords if stemmer else None
        t = time.perf_counter()
        bm = bm25s.BM25()
        bm.index(bm25s.tokenize(titles, stopwords="en", stemmer=stem, show_progress=False), show_progress=False)
        build_bm = time.perf_counter() - t
        run, lat = {}, []
        for q in queries:
            t = time.perf_counter()
            tokens = bm25s.tokenize([q], stopwords="en", stemmer=stem, show_progress=False)
            docs, scores = bm.retrieve(tokens, k=100, show_progress=False) if tokens.vocab else ([[]], [[]])
            run[q] = {ids[d]: float(s) for d, s in zip(docs[0], scores[0], strict=True) if s > 0}
            lat.append(time.perf_counter() - t)
        results[label] = {"build_s": build_bm, "latencies": lat, "run": run}

    # tantivy through skulens' own lexical index (title field only, like bm25s above).
    title_only = products.select(["product_id", "title", "category_path", "attributes", "price"])
    t = time.perf_counter()
    index = BM25Index.build(title_only, LexicalConfig(boosts={"title": 1.0}))
    build_tv = time.perf_counter() - t
    run, lat = {}, []
    for q in queries:
        t = time.perf_counter()
        run[q] = dict(index.search(q, k=100))
        lat.append(time.perf_counter() - t)
    results["tantivy (en_stem, skulens BM25Index)"] = {"build_s": build_tv, "latencies": lat, "run": run}

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
        "(graded 0-6 from the 1-3 scale). bm25s 0.3: English stop words removed, Lucene BM25, with and "
        "without PyStemmer. tantivy 0.27: `skulens.retrieval.lexical.BM25Index` (`en_stem` tokenizer, BM25, "
        "any of the lower-cased query words).", "",
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
