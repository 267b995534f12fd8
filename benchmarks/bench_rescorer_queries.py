"""How many training queries the served ranking should learn from: docs/benchmarks/rescorer_queries.md.

`build_index` learns each version's ranking (fusion weight, per-query weight, LambdaMART rescorer of
the fused head) on 4,000 training queries (``RANKING_QUERIES``), and `skulens eval` the same; the
Home Depot judgments hold about twice as many useful training queries. This learns the ranking
exactly as both do on nested samples of 1,000, 2,000, 4,000 and every useful training query, and
scores each on the held-out queries of `skulens eval` (the same split, the same dense encoder),
with paired 95% bootstrap intervals of each against the 4,000 in use and the learning time.

    .venv/bin/python benchmarks/bench_rescorer_queries.py
"""

from __future__ import annotations

import random
import time

import numpy as np
from _report import machine_description, write_report

SIZES = (1000, 2000, 4000, None)  # None: every useful training query
CURRENT = 4000


def main() -> None:
    from _homedepot import judged_homedepot, retrievers

    from skulens.evaluation.harness import EvalConfig
    from skulens.evaluation.metrics import bootstrap_mean, paired_bootstrap, per_query_array
    from skulens.evaluation.ranking import UNJUDGED_REL, learn_adaptive, learn_rescorer, learn_weight
    from skulens.retrieval.ranking import RankingPolicy
    from skulens.retrieval.retrievers import PolicyRetriever, SearchQuery
    from skulens.settings import load_settings

    started = time.perf_counter()
    settings, cfg = load_settings(), EvalConfig()
    data = judged_homedepot(settings, cfg)
    rng = random.Random(cfg.seed)  # the eval's sampling of its held-out queries
    held = sorted(q for q, s in data.splits.items() if s == "test" and q in data.useful)
    test = sorted(rng.sample(held, cfg.max_test_queries)) if cfg.max_test_queries and \
        len(held) > cfg.max_test_queries else held
    pool = sorted(q for q, s in data.splits.items() if s == "train" and q in data.useful)
    random.Random(cfg.seed).shuffle(pool)  # nested samples: each size holds the smaller ones
    print(f"{len(test)} held-out queries, {len(pool)} useful training queries", flush=True)

    dense, bm25, label = retrievers(settings, cfg, data)
    queries = [SearchQuery(text=q) for q in pool]
    pool_dense = dict(zip(pool, dense.search_batch(queries, cfg.depth), strict=True))
    pool_lexical = dict(zip(pool, bm25.search_batch(queries, cfg.depth), strict=True))

    def ndcg(retriever) -> np.ndarray:
        hits = retriever.search_batch([SearchQuery(text=q) for q in test], 10)
        run = {q: {p: float(len(h) - i) for i, (p, _) in enumerate(h)} for q, h in zip(test, hits, strict=True)}
        return per_query_array({q: data.qrels[q] for q in test}, run, "nDCG@10", test)

    rows: dict[str, dict] = {}
    scores: dict[str, np.ndarray] = {}
    for size in SIZES:
        train = sorted(pool[:size] if size else pool)
        name = str(size or f"all ({len(pool)})")
        t = time.perf_counter()
        qrels = {q: data.qrels[q] for q in train}
        d, lx = {q: pool_dense[q] for q in train}, {q: pool_lexical[q] for q in train}
        weight, _ = learn_weight(d, lx, qrels)
        adaptive, _ = learn_adaptive({q: q for q in train}, d, lx, qrels)
        policy = RankingPolicy(fusion_weight=weight, adaptive=adaptive)
        fused = {q: policy.fuse(d[q], lx[q], q) for q in train}
        rescorer, measured = learn_rescorer({q: q for q in train}, qrels, fused, d, lx, data.titles,
                                            depth=cfg.depth, unjudged_rel=UNJUDGED_REL)
        learn_s = time.perf_counter() - t
        served = PolicyRetriever(dense, bm25, RankingPolicy(fusion_weight=weight, adaptive=adaptive,
                                                            rescorer=rescorer), cfg.depth, "served",
                                 titles=data.titles)
        scores[name] = ndcg(served)
        rows[name] = {"train_queries": len(train), "fusion_weight": weight, "adaptive": adaptive is not None,
                      "rescorer": measured["kept"], "learn_s": round(learn_s, 1),
                      "nDCG@10": [round(v, 4) for v in bootstrap_mean(scores[name])]}
        print(name, rows[name], flush=True)
    base = scores[str(CURRENT)]
    for name, row in rows.items():
        row["gain_vs_4000"] = [round(v, 4) for v in paired_bootstrap(scores[name], base)]

    lines = ["# How many training queries the served ranking learns from", "",
             f"Measured on {machine_description()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
             "Command: `.venv/bin/python benchmarks/bench_rescorer_queries.py`.", "",
             f"{len(test)} held-out real Home Depot queries (the split and sample of `skulens eval`) over "
             f"{len(data.ids):,} products; dense side {label}. Each row learns the fusion weight, the per-query "
             "weight and the LambdaMART rescorer of the fused top 100 as `build_index` and `skulens eval` learn "
             f"them, on nested samples of the {len(pool):,} useful training queries. Paired 95% bootstrap "
             f"intervals against the {CURRENT:,} queries in use.", "",
             "| training queries | fusion weight | rescorer kept | nDCG@10 [95% CI] | gain vs 4,000 | learning s |",
             "|---|---:|---|---|---|---:|"]
    for name, r in rows.items():
        m, g = r["nDCG@10"], r["gain_vs_4000"]
        lines.append(f"| {name} | {r['fusion_weight']} | {r['rescorer'].split(':')[0]} | {m[0]:.4f} [{m[1]:.4f}, "
                     f"{m[2]:.4f}] | {g[0]:+.4f} [{g[1]:+.4f}, {g[2]:+.4f}] | {r['learn_s']} |")
    lines += ["", f"{time.perf_counter() - started:.0f} s in all."]
    write_report("rescorer_queries", lines, {"machine": machine_description(), "held_out": len(test),
                                             "dense": label, "rows": rows})


if __name__ == "__main__":
    main()
