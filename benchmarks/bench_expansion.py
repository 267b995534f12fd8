"""Query expansion mined from chosen products, tried on held-out real queries: docs/benchmarks/expansion.md.

Rules ``query word -> title words`` (skulens.retrieval.expansion) are mined from the training
queries' relevant Home Depot judgments (grade >= 4 of 6: what a click log would give, from real
shoppers' relevance, never from a held-out query); then BM25 over the whole catalogue answers the
held-out queries of ``skulens eval`` (the same split and relevance) with and without the expansion
clause, per weight, with paired 95% bootstrap intervals over all queries and over those a rule
touches. Not served: it is served only if it wins here.

    .venv/bin/python benchmarks/bench_expansion.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _report import machine_description, write_report

SETTINGS = {  # name -> mine_expansions keyword arguments
    "loose": {"min_support": 3, "min_lift": 5.0},
    "strict": {"min_support": 5, "min_lift": 10.0},
}
WEIGHTS = (0.2, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", default="homedepot")
    args = parser.parse_args()

    from skulens.data.catalog import read_table
    from skulens.evaluation.harness import EvalConfig, query_splits, to_rel
    from skulens.evaluation.metrics import bootstrap_mean, paired_bootstrap, per_query
    from skulens.retrieval.expansion import QueryExpansion, mine_expansions
    from skulens.retrieval.lexical import BM25Index, LexicalConfig
    from skulens.settings import load_settings

    started = time.perf_counter()
    settings, cfg = load_settings(), EvalConfig()
    products = read_table(settings, args.catalog, "products")
    titles = dict(zip(products.column("product_id").to_pylist(), products.column("title").to_pylist(), strict=True))
    qrels: dict[str, dict[str, int]] = {}
    for row in read_table(settings, args.catalog, "judgments").to_pylist():
        if row["product_id"] in titles:
            qrels.setdefault(row["query"], {})[row["product_id"]] = to_rel(row["grade"], row["source"])
    relevant = 4
    splits = query_splits(settings, sorted(qrels), cfg.test_fraction, cfg.seed)
    test = sorted(q for q, s in splits.items() if s == "test" and any(g >= relevant for g in qrels[q].values()))
    train = sorted(q for q, s in splits.items() if s == "train")
    chosen = [(q, titles[p]) for q in train for p, g in qrels[q].items() if g >= relevant]
    lexical = BM25Index.build(products, LexicalConfig.from_settings(settings.retrieval))
    held_out = {q: qrels[q] for q in test}

    def ndcg(expansion: QueryExpansion) -> np.ndarray:
        run = {q: {pid: 10.0 - i for i, (pid, _) in enumerate(
            lexical.search(q, 10, expansion=expansion.terms(q), expansion_weight=expansion.weight))} for q in test}
        by_query = per_query(held_out, run, "nDCG@10")
        return np.array([by_query[q] for q in test])

    plain = ndcg(QueryExpansion())
    results: dict[str, dict] = {}
    for name, kwargs in SETTINGS.items():
        rules = mine_expansions(chosen, **kwargs)
        touched = np.array([bool(QueryExpansion(rules, 1.0).terms(q)) for q in test])
        rows = {}
        for weight in WEIGHTS:
            expanded = ndcg(QueryExpansion(rules, weight))
            rows[str(weight)] = {"nDCG@10": round(float(expanded.mean()), 4),
                                 "gain": [round(v, 4) for v in paired_bootstrap(expanded, plain)],
                                 "gain_touched": [round(v, 4) for v in paired_bootstrap(expanded[touched],
                                                                                       plain[touched])]}
        results[name] = {"mined_with": kwargs, "rules": len(rules), "touched_queries": int(touched.sum()),
                         "examples": dict(list(rules.items())[:12]), "by_weight": rows}

    base = [round(v, 4) for v in bootstrap_mean(plain)]
    lines = ["# Query expansion mined from chosen products (not served)", "",
             f"Measured on {machine_description()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
             "Command: `.venv/bin/python benchmarks/bench_expansion.py`.", "",
             f"Mined from {len(chosen):,} (training query, relevant product) pairs of {len(train):,} real training "
             f"queries; BM25 (tantivy, as indexed) over {len(titles):,} products answers {len(test)} held-out real "
             f"queries (the split of `skulens eval`). Plain BM25 nDCG@10 {base[0]:.4f} [{base[1]:.4f}, {base[2]:.4f}].",
             "", "| rules | mined | touched queries | weight | nDCG@10 | gain, all queries | gain, touched queries |",
             "|---|---:|---:|---:|---:|---|---|"]
    for name, result in results.items():
        for weight, row in result["by_weight"].items():
            g, t = row["gain"], row["gain_touched"]
            lines.append(f"| {name} | {result['rules']:,} | {result['touched_queries']} | {weight} "
                         f"| {row['nDCG@10']:.4f} | {g[0]:+.4f} [{g[1]:+.4f}, {g[2]:+.4f}] "
                         f"| {t[0]:+.4f} [{t[1]:+.4f}, {t[2]:+.4f}] |")
    best = max((row["gain"][1], name, weight) for name, r in results.items() for weight, row in r["by_weight"].items())
    verdict = ("wins" if best[0] > 0 else "does not win")
    lines += ["", f"Verdict: the expansion {verdict} (best lower bound of the gain {best[0]:+.4f}, rules {best[1]}, "
              f"weight {best[2]}); {'it can be served' if best[0] > 0 else 'it is not served'}.", "",
              "Examples of mined rules (strict): " + "; ".join(
                  f"{w} → {', '.join(v)}" for w, v in results["strict"]["examples"].items()), "",
              f"{time.perf_counter() - started:.0f} s in all."]
    write_report("expansion", lines, {"machine": machine_description(), "plain_bm25": base, "results": results,
                                      "verdict": verdict})


if __name__ == "__main__":
    main()
