"""Benchmark: query spelling correction on real Home Depot queries, clean and with seeded noise.

The held-out queries of the `skulens eval` split (1,000 with a relevant product) and 2,000 training
queries, each also corrupted as the harness corrupts it (``noisy_query``: a typo in a word of 4+
letters, or, for 3+ words, a dropped word), searched over the whole catalogue by BM25 (the served
normaliser) and, unless ``--no-dense``, by BM25 fused with the packaged MiniLM at the weight learned
on the training queries. Every registered speller (``skulens.serving.spelling.SPELLERS``: off,
frequency, context) runs in front of both, built as the service builds it (``make_speller`` over the
catalogue's titles). A typo is information a corrector can restore; a dropped word is information
lost, so the two kinds are reported apart.

    .venv/bin/python benchmarks/bench_spelling.py [--no-dense]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_description, write_report  # noqa: E402
from bench_query_understanding import _split, homedepot, minilm_dense  # noqa: E402


def _kind(clean: str, noisy: str) -> str:
    return "drop" if len(noisy.split()) < len(clean.split()) else "typo" if noisy != clean else "same"


def main() -> None:  # noqa: PLR0915 - one linear measurement script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-dense", action="store_true", help="BM25 only (no MiniLM encoding)")
    args = parser.parse_args()

    from skulens.evaluation.harness import EvalConfig, _as_run, noisy_query, score_run
    from skulens.evaluation.ranking import learn_weight
    from skulens.retrieval.lexical import BM25Index, LexicalConfig
    from skulens.retrieval.retrievers import HybridRetriever, LexicalRetriever, SearchQuery
    from skulens.serving.spelling import SPELLERS, make_speller
    from skulens.settings import load_settings

    settings, cfg = load_settings(), EvalConfig()
    products, ids, titles, qrels = homedepot(settings)
    test, train = _split(settings, qrels, cfg)
    noise = random.Random(cfg.seed + 1)  # the harness's corruption of the held-out queries, exactly
    noisy = {q: noisy_query(q, noise) for q in test}
    noise_train = random.Random(cfg.seed + 2)
    noisy.update({q: noisy_query(q, noise_train) for q in train})
    kinds = {q: _kind(q, noisy[q]) for q in test + train}

    retrievers = {"bm25": LexicalRetriever(BM25Index.build(products, LexicalConfig.from_settings(settings.retrieval)))}
    if not args.no_dense:
        dense = minilm_dense(settings, products, ids, titles)
        train_q = [SearchQuery(text=q) for q in train]
        weight, _ = learn_weight(dict(zip(train, dense.search_batch(train_q, cfg.depth), strict=True)),
                                 dict(zip(train, retrievers["bm25"].search_batch(train_q, cfg.depth), strict=True)),
                                 {q: qrels[q] for q in train})
        retrievers[f"hybrid ({weight:g})"] = HybridRetriever(dense, retrievers["bm25"], "weighted", weight=weight,
                                                            depth=cfg.depth)

    found: dict[tuple[str, str], list] = {}  # (retriever, text) -> hits: each text is searched once

    def ndcg(label: str, texts: dict[str, str], queries: list[str]) -> dict[str, float]:
        todo = sorted({texts[q] for q in queries if (label, texts[q]) not in found})
        for text, hits in zip(todo, retrievers[label].search_batch([SearchQuery(text=t) for t in todo], cfg.depth),
                              strict=True):
            found[(label, text)] = hits
        hits = [found[(label, texts[q])] for q in queries]
        return score_run({q: qrels[q] for q in queries}, _as_run(queries, hits), 4)

    rows: dict[str, dict] = {}
    for name in SPELLERS:
        started = time.perf_counter()
        speller = make_speller(name, titles.values())
        build_s = time.perf_counter() - started

        def fix(text: str, speller=speller) -> str:  # noqa: ANN001
            return text if speller is None else speller.correct(text)[0]
        clean_texts, noisy_texts, ms = {}, {}, []
        for q in test + train:
            clean_texts[q] = fix(q)
            started = time.perf_counter()
            noisy_texts[q] = fix(noisy[q])
            ms.append(1000 * (time.perf_counter() - started))
        for label in retrievers:
            row: dict = {"build_s": round(build_s, 2), "p50_ms": round(float(np.percentile(ms, 50)), 3),
                         "p95_ms": round(float(np.percentile(ms, 95)), 3)}
            for split, queries in (("test", test), ("train", train)):
                clean = ndcg(label, clean_texts, queries)
                row[split] = {"clean": clean["nDCG@10"], "noisy": ndcg(label, noisy_texts, queries)["nDCG@10"],
                              "zero_useful_noisy": None}
                for kind in ("typo", "drop"):
                    subset = [q for q in queries if kinds[q] == kind]
                    row[split][f"{kind}_clean"] = ndcg(label, clean_texts, subset)["nDCG@10"]
                    row[split][kind] = ndcg(label, noisy_texts, subset)["nDCG@10"]
                    row[split][f"{kind}_queries"] = len(subset)
                row[split]["zero_useful_noisy"] = ndcg(label, noisy_texts, queries)["zero_useful@10"]
            rows[f"{label}, spelling {name}"] = row
            print(label, name, row["test"], flush=True)

    report = {"written_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_description(),
              "queries": {"test": len(test), "train": len(train)}, "products": len(ids), "rows": rows,
              "served": settings.serving.spelling}
    flag = " --no-dense" if args.no_dense else ""
    first = rows[next(iter(rows))]["test"]
    lines = ["# Query spelling on real Home Depot queries", "",
             f"Command: `.venv/bin/python benchmarks/bench_spelling.py{flag}`  ",
             f"Machine: {report['machine']}  ", f"Written: {report['written_at']}", "",
             f"{len(test):,} held-out real queries (the `skulens eval` split) and {len(train):,} training queries over "
             f"all {len(ids):,} titles, each also with the harness's seeded noise: a typo ({first['typo_queries']} "
             f"held-out queries) or a dropped word ({first['drop_queries']}). nDCG@10, relevant = grade >= 4 of 0-6. "
             f"Each speller runs in front of the retriever on the clean and on the noisy query; x = noisy / clean "
             f"with the same speller. Served: `serving.spelling: {settings.serving.spelling}`.", "",
             "| retriever, spelling | clean | typo (x clean) | dropped word (x clean) | all noisy (x clean) | "
             "zero-useful@10 noisy | training queries: clean / noisy | correct() p50 / p95 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        t, tr = row["test"], row["train"]
        lines.append(
            f"| {name} | {t['clean']:.4f} | {t['typo']:.4f} ({t['typo'] / t['typo_clean']:.2f}x) | "
            f"{t['drop']:.4f} ({t['drop'] / t['drop_clean']:.2f}x) | {t['noisy']:.4f} ({t['noisy'] / t['clean']:.2f}x) "
            f"| {t['zero_useful_noisy']:.3f} | {tr['clean']:.4f} / {tr['noisy']:.4f} | "
            f"{row['p50_ms']:.2f} / {row['p95_ms']:.2f} ms |")
    lines += ["", "A dropped word cannot be restored by a speller: those queries lose real information, so their ratio "
              "measures the retriever on a shorter query, not robustness to typing errors.",
              "The context speller's constants (skulens.serving.spelling: CONTEXT_WEIGHT, FREQUENCY_WEIGHT, "
              "EDIT_COST, rare, margin) were chosen in an exploration on BM25 with the held-out queries' noise; the "
              "training-query column is the check on queries that exploration never saw."]
    write_report("spelling", lines, report)


if __name__ == "__main__":
    main()
