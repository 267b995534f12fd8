"""Benchmark: query understanding on the real Home Depot queries, component by component.

Each component is measured against the configuration without it, on the held-out queries of the
harness's split (the same ``skulens eval`` uses: training-pair split, 1,000 held-out queries with a
relevant product, 2,000 training queries), over the whole catalogue:

* the lexical normaliser (``retrieval.lexical_normaliser``: ``none`` vs ``measures``: units, sizes,
  dimensions and model numbers meet on canonical tokens), BM25 alone and fused with the packaged
  MiniLM dense side at the weight learned on the training queries;
* the per-query fusion weight (``AdaptiveWeight``), learned on the training queries and kept only
  if it beats the single weight on held-out folds of them; the report gives its cross-validated
  gain and the oracle (the best weight per query, known only in hindsight).

MiniLM title vectors are cached under ``SKULENS_HOME/cache/bench`` (the encoding is most of the
run's time).

    .venv/bin/python benchmarks/bench_query_understanding.py [--no-dense]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_description, write_report  # noqa: E402


def _split(settings, qrels, cfg):
    from skulens.evaluation.harness import query_splits

    splits = query_splits(settings, sorted(qrels), cfg.test_fraction, cfg.seed)
    rng = random.Random(cfg.seed)

    def sample(split: str, limit: int) -> list[str]:
        chosen = sorted(q for q, s in splits.items() if s == split and any(g >= 4 for g in qrels[q].values()))
        return sorted(rng.sample(chosen, limit)) if len(chosen) > limit else chosen

    return sample("test", cfg.max_test_queries), sample("train", cfg.max_train_queries)


def homedepot(settings):  # noqa: ANN001, ANN201
    """The Home Depot catalogue's products, their titles by id and the graded qrels of every query."""
    from skulens.data.catalog import read_table
    from skulens.evaluation.harness import to_rel

    products = read_table(settings, "homedepot", "products")
    ids = products.column("product_id").to_pylist()
    titles = dict(zip(ids, products.column("title").to_pylist(), strict=True))
    qrels: dict[str, dict[str, int]] = {}
    for row in read_table(settings, "homedepot", "judgments").to_pylist():
        qrels.setdefault(row["query"], {})[row["product_id"]] = to_rel(row["grade"], row["source"])
    return products, ids, titles, qrels


def minilm_dense(settings, products, ids, titles):  # noqa: ANN001, ANN201
    """A dense retriever over every title with the packaged MiniLM, the vector index as configured."""
    from skulens.retrieval.retrievers import DenseRetriever
    from skulens.retrieval.vector_index import ShardedVectorIndex, VectorIndexConfig

    encoder, vectors = _vectors(settings, ids, titles)
    paths = products.column("category_path").to_pylist()
    store = ShardedVectorIndex.build(ids, vectors, [p[0] if p else None for p in paths],
                                     VectorIndexConfig(**settings.retrieval.vector.model_dump()),
                                     model_version="minilm")
    return DenseRetriever(store, encoder)


def _vectors(settings, ids, titles):
    from skulens.retrieval.encoders import make_encoder

    encoder = make_encoder("minilm")
    key = hashlib.sha1("\n".join(titles[i] for i in ids).encode()).hexdigest()[:16]
    cache = settings.home / "cache" / "bench" / f"minilm-homedepot-{key}.npy"
    if cache.is_file():
        return encoder, np.load(cache)
    started = time.perf_counter()
    vectors = encoder.encode_texts([titles[i] for i in ids])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    print(f"encoded {len(ids):,} titles in {time.perf_counter() - started:.0f} s", flush=True)
    return encoder, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-dense", action="store_true", help="BM25 only (a minute; no MiniLM encoding)")
    args = parser.parse_args()

    from skulens.evaluation.harness import EvalConfig, _as_run, score_run
    from skulens.evaluation.ranking import learn_adaptive, learn_weight
    from skulens.retrieval.lexical import BM25Index, LexicalConfig
    from skulens.retrieval.ranking import RankingPolicy
    from skulens.retrieval.retrievers import (
        HybridRetriever,
        LexicalRetriever,
        PolicyRetriever,
        SearchQuery,
    )
    from skulens.settings import load_settings

    settings, cfg = load_settings(), EvalConfig()
    products, ids, titles, qrels = homedepot(settings)
    test, train = _split(settings, qrels, cfg)
    test_q, train_q = [SearchQuery(text=q) for q in test], [SearchQuery(text=q) for q in train]
    test_qrels, train_qrels = {q: qrels[q] for q in test}, {q: qrels[q] for q in train}
    rows: dict[str, dict] = {}
    measured: dict[str, dict] = {}
    lexical = {}
    for name in ("none", "measures"):
        started = time.perf_counter()
        lexical[name] = LexicalRetriever(BM25Index.build(products, LexicalConfig(normaliser=name)))
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        hits = lexical[name].search_batch(test_q, cfg.depth)
        ms = 1000 * (time.perf_counter() - started) / len(test)
        rows[f"bm25, normaliser {name}"] = {**score_run(test_qrels, _as_run(test, hits), 4),
                                            "ms_per_query": round(ms, 2), "build_s": round(build_s, 1)}
        print(f"bm25 {name}", rows[f"bm25, normaliser {name}"], flush=True)
    if not args.no_dense:
        dense = minilm_dense(settings, products, ids, titles)
        train_dense = dict(zip(train, dense.search_batch(train_q, cfg.depth), strict=True))
        rows["dense (MiniLM)"] = score_run(test_qrels, _as_run(test, dense.search_batch(test_q, cfg.depth)), 4)
        for name, bm25 in lexical.items():
            train_lexical = dict(zip(train, bm25.search_batch(train_q, cfg.depth), strict=True))
            weight, _ = learn_weight(train_dense, train_lexical, train_qrels)
            hybrid = HybridRetriever(dense, bm25, "weighted", weight=weight, depth=cfg.depth)
            rows[f"hybrid weighted ({weight:g}), normaliser {name}"] = score_run(
                test_qrels, _as_run(test, hybrid.search_batch(test_q, cfg.depth)), 4)
            adaptive, measured[name] = learn_adaptive({q: q for q in train}, train_dense, train_lexical, train_qrels)
            if adaptive is not None:
                policy = RankingPolicy(fusion_weight=weight, adaptive=adaptive)
                fused = PolicyRetriever(dense, bm25, policy, cfg.depth).search_batch(test_q, cfg.depth)
                rows[f"hybrid adaptive, normaliser {name}"] = score_run(test_qrels, _as_run(test, fused), 4)
            print(name, measured[name], flush=True)
    report = {"written_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_description(),
              "queries": {"test": len(test), "train": len(train)}, "products": len(ids), "rows": rows,
              "adaptive_fusion": measured}
    flag = " --no-dense" if args.no_dense else ""
    lines = ["# Query understanding on real Home Depot queries", "",
             f"Command: `.venv/bin/python benchmarks/bench_query_understanding.py{flag}`  ",
             f"Machine: {report['machine']}  ", f"Written: {report['written_at']}", "",
             f"{len(test):,} held-out real queries (the `skulens eval` split) over all {len(ids):,} titles; weights "
             f"learned on {len(train):,} training queries; relevant = grade >= 4 of 0-6 (2.33 of Home Depot's 1-3).",
             "", "| configuration | nDCG@10 | recall@100 | MRR | zero_useful@10 | judged@10 |",
             "|---|---|---|---|---|---|"]
    for name, m in rows.items():
        lines.append(f"| {name} | {m['nDCG@10']:.4f} | {m['recall@100']:.4f} | {m['MRR']:.4f} | "
                     f"{m['zero_useful@10']:.4f} | {m['judged@10']:.4f} |")
    lines.append("")
    for name, m in measured.items():
        lines.append(f"Per-query fusion weight, normaliser {name}: {m.get('adaptive')}; cross-validated nDCG@10 "
                     f"{m.get('cv_adaptive_nDCG@10')} vs the single weight {m.get('cv_single_weight_nDCG@10')} "
                     f"(oracle, the best weight per query in hindsight: {m.get('oracle_nDCG@10')}).")
    write_report("query_understanding", lines, report)


if __name__ == "__main__":
    main()
