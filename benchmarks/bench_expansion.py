"""Query expansion mined from chosen products, tried on held-out real queries: docs/benchmarks/expansion.md.

Rules ``query word -> title words`` (skulens.retrieval.expansion) are mined from the training
queries' relevant Home Depot judgments (grade >= 4 of 6: what a click log would give, from real
shoppers' relevance, never from a held-out query); then BM25 over the whole catalogue answers the
held-out queries of ``skulens eval`` (the same split and relevance) with and without the expansion
clause: the rule setting and weight chosen on training queries, then tested once on the held-out
ones, with paired 95% bootstrap intervals over all queries and over those a rule touches. Served
only if it wins here.

    .venv/bin/python benchmarks/bench_expansion.py
"""

from __future__ import annotations

import argparse
import hashlib
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
    from skulens.evaluation.metrics import bootstrap_mean, paired_bootstrap, per_query_array
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

    def ndcg(expansion: QueryExpansion, qids: list[str]) -> np.ndarray:
        run = {q: {pid: 10.0 - i for i, (pid, _) in enumerate(
            lexical.search(q, 10, expansion=expansion.terms(q), expansion_weight=expansion.weight))} for q in qids}
        return per_query_array({q: qrels[q] for q in qids}, run, "nDCG@10", qids)

    def gain(after: np.ndarray, before: np.ndarray) -> list[float]:
        return [round(v, 4) for v in paired_bootstrap(after, before)] if len(after) else [0.0, 0.0, 0.0]

    # Chosen on training queries only: rules mined from one half of them, the setting and weight
    # picked on the other half; then mined from all of them and tested once on the held-out queries.
    half = {q: int(hashlib.sha1(q.encode()).hexdigest(), 16) % 2 for q in train}
    tune = [q for q in train if half[q] == 1 and any(g >= relevant for g in qrels[q].values())]
    mine_from = [(q, title) for q, title in chosen if half[q] == 0]
    plain_tune = ndcg(QueryExpansion(), tune)
    tuning: dict[str, dict] = {}
    for name, kwargs in SETTINGS.items():
        rules = mine_expansions(mine_from, **kwargs)
        tuning[name] = {"rules": len(rules), "by_weight": {}}
        for weight in WEIGHTS:
            tuning[name]["by_weight"][str(weight)] = gain(ndcg(QueryExpansion(rules, weight), tune), plain_tune)
    picked = max(((name, float(w)) for name, r in tuning.items() for w in r["by_weight"]),
                 key=lambda nw: tuning[nw[0]]["by_weight"][str(nw[1])][0])
    rules = mine_expansions(chosen, **SETTINGS[picked[0]])
    expansion = QueryExpansion(rules, picked[1])
    plain, expanded = ndcg(QueryExpansion(), test), ndcg(expansion, test)
    touched = np.array([bool(expansion.terms(q)) for q in test])
    held = {"gain": gain(expanded, plain), "gain_touched": gain(expanded[touched], plain[touched]),
            "touched_queries": int(touched.sum()), "rules": len(rules), "nDCG@10": round(float(expanded.mean()), 4)}
    wins = held["gain"][1] > 0

    base = [round(v, 4) for v in bootstrap_mean(plain)]
    lines = ["# Query expansion mined from chosen products" + ("" if wins else " (not served)"), "",
             f"Measured on {machine_description()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
             "Command: `.venv/bin/python benchmarks/bench_expansion.py`.", "",
             f"{len(chosen):,} (training query, relevant product) pairs of {len(train):,} real training queries. "
             f"Rules mined from half of those queries; the rule setting and the clause's weight chosen on "
             f"{len(tune):,} queries of the other half; then rules mined from all training queries and BM25 "
             f"(tantivy, as indexed, {len(titles):,} products) tested once on {len(test)} held-out real queries "
             "(the split of `skulens eval`). Paired 95% bootstrap intervals.", "",
             "**Choice on training queries** (gain in nDCG@10 over plain BM25 on the tuning half)", "",
             "| rules | mined | " + " | ".join(f"weight {w}" for w in WEIGHTS) + " |",
             "|---|---:|" + "---|" * len(WEIGHTS)]
    for name, result in tuning.items():
        lines.append(f"| {name} | {result['rules']:,} | " + " | ".join(
            f"{g[0]:+.4f} [{g[1]:+.4f}, {g[2]:+.4f}]" for g in result["by_weight"].values()) + " |")
    g, t = held["gain"], held["gain_touched"]
    lines += ["", f"**Held out**: rules `{picked[0]}` ({held['rules']:,} mined from all training queries), weight "
              f"{picked[1]}: nDCG@10 {held['nDCG@10']:.4f} vs plain BM25 {base[0]:.4f} [{base[1]:.4f}, {base[2]:.4f}]; "
              f"gain {g[0]:+.4f} [{g[1]:+.4f}, {g[2]:+.4f}] over all queries, {t[0]:+.4f} [{t[1]:+.4f}, {t[2]:+.4f}] "
              f"over the {held['touched_queries']} queries a rule touches.", "",
              f"Verdict: the expansion {'wins' if wins else 'does not win'} on held-out queries (the lower bound of "
              f"its gain is {'above' if wins else 'not above'} 0); "
              f"{'it can be served' if wins else 'it is not served'}.",
              "", "Examples of mined rules: " + "; ".join(f"{w} → {', '.join(v)}" for w, v in list(rules.items())[:12]),
              "", f"{time.perf_counter() - started:.0f} s in all."]
    write_report("expansion", lines, {"machine": machine_description(), "plain_bm25": base, "tuning": tuning,
                                      "picked": {"rules": picked[0], "weight": picked[1]}, "held_out": held,
                                      "verdict": "wins" if wins else "does not win"})


if __name__ == "__main__":
    main()
