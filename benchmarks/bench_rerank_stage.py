"""The cross-encoder over the served (rescored) order, three ways: docs/benchmarks/rerank_stage.md.

The ranking `skulens eval` measures and `build_index` serves is the fused dense + BM25 order
rescored by LambdaMART. Does the champion cross-encoder add to it (issue goal: + 0.02 nDCG@10)?
Over the rescored top N (5, 10, 20) of held-out real Home Depot queries:

* ``blend``: ``w * minmax(cross-encoder) + (1 - w) * minmax(rescorer)`` through the harness's own
  ``RerankedRetriever``, ``w`` learned by ``learn_weight`` as `skulens eval` learns it, but on
  training queries the rescorer was not fitted on (the eval learns it on the rescorer's own, where
  the rescored order looks better than it is);
* ``stage2``: a second LambdaMART over the rescored rank and score and the cross-encoder's score,
  its rank and its standing in the list, fitted on training queries the rescorer was not fitted on.

The rescorer is learned exactly as `skulens eval` learns it (same split, the same 4,000 training
queries, the same encoder). Paired 95% bootstrap intervals of each gain over the rescored order;
the cross-encoder's own milliseconds a query timed at each depth on 200 held-out queries.

    .venv/bin/python benchmarks/bench_rerank_stage.py [--stage-queries 1500]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
from _report import machine_description, write_report

DEPTHS = (5, 10, 20)


def _features(text: str, hits: list, scores: np.ndarray) -> np.ndarray:
    base = np.array([s for _, s in hits])
    rank = np.arange(len(hits))
    ce_rank = np.argsort(np.argsort(-scores))
    return np.column_stack([rank, 1 / (rank + 1), base - base.max(), scores, scores - scores.max(),
                            (scores - scores.mean()) / (scores.std() + 1e-6), ce_rank,
                            np.full(len(hits), len(text.split()))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage-queries", type=int, default=1500, help="training queries that fit the blend/stage 2")
    args = parser.parse_args()

    import lightgbm
    from _homedepot import judged_homedepot, retrievers

    from skulens.evaluation.harness import EvalConfig, reranker_scorer
    from skulens.evaluation.metrics import bootstrap_mean, paired_bootstrap, per_query_array
    from skulens.evaluation.ranking import RESCORE_PARAMS, UNJUDGED_REL, learn_adaptive, learn_rescorer, learn_weight
    from skulens.retrieval.ranking import RankingPolicy
    from skulens.retrieval.retrievers import PolicyRetriever, RerankedRetriever, SearchQuery
    from skulens.settings import load_settings

    started = time.perf_counter()
    settings, cfg = load_settings(), EvalConfig()
    data = judged_homedepot(settings, cfg)
    ids, titles, qrels, splits, useful = data.ids, data.titles, data.qrels, data.splits, data.useful
    rng = random.Random(cfg.seed)  # the sampling of skulens eval, so the same queries

    def sample(split: str, limit: int) -> list[str]:
        chosen = sorted(q for q, s in splits.items() if s == split and q in useful)
        return sorted(rng.sample(chosen, limit)) if len(chosen) > limit else chosen

    test, train = sample("test", cfg.max_test_queries or 1000), sample("train", cfg.max_train_queries or 4000)
    fitted = set(train)
    rest = sorted(q for q, s in splits.items() if s == "train" and q in useful and q not in fitted)
    stage = sorted(random.Random(1).sample(rest, min(args.stage_queries, len(rest))))
    print(f"{len(test)} held-out, {len(train)} rescorer training, {len(stage)} stage training queries", flush=True)

    dense, bm25, label = retrievers(settings, cfg, data)
    train_q = [SearchQuery(text=q) for q in train]
    train_dense = dict(zip(train, dense.search_batch(train_q, cfg.depth), strict=True))
    train_lexical = dict(zip(train, bm25.search_batch(train_q, cfg.depth), strict=True))
    train_qrels = {q: qrels[q] for q in train}
    weight, _ = learn_weight(train_dense, train_lexical, train_qrels)
    adaptive, _ = learn_adaptive({q: q for q in train}, train_dense, train_lexical, train_qrels)
    policy = RankingPolicy(fusion_weight=weight, adaptive=adaptive)
    fused = {q: policy.fuse(train_dense[q], train_lexical[q], q) for q in train}
    rescorer, measured = learn_rescorer({q: q for q in train}, train_qrels, fused, train_dense, train_lexical, titles,
                                        depth=cfg.depth, unjudged_rel=UNJUDGED_REL)
    if rescorer is None:
        raise SystemExit(f"the rescorer was not kept ({measured['kept']}): nothing to rerank over")
    served = PolicyRetriever(dense, bm25, RankingPolicy(fusion_weight=weight, adaptive=adaptive, rescorer=rescorer),
                             cfg.depth, "hybrid_rescored", titles=titles)
    scorer, reranker = reranker_scorer(settings, "champion")
    if scorer is None:
        raise SystemExit(f"no champion reranker: {reranker}")
    top = max(DEPTHS)
    heads = dict(zip(stage + test, served.search_batch([SearchQuery(text=q) for q in stage + test], top), strict=True))
    scores = {q: np.asarray(scorer(q, [titles[p] for p, _ in heads[q]]), dtype=np.float64) for q in stage + test}

    def cached(text: str, candidates: list[str]) -> np.ndarray:  # a pair's score does not depend on the others
        return scores[text][:len(candidates)]

    def timed_ms(depth: int) -> list[float]:
        times = []
        for q in test[:200]:
            t = time.perf_counter()
            scorer(q, [titles[p] for p, _ in heads[q][:depth]])
            times.append(1000 * (time.perf_counter() - t))
        return [round(float(np.percentile(times, 50)), 1), round(float(np.percentile(times, 95)), 1)]

    def ndcg(orders: dict[str, list[str]], qids: list[str]) -> np.ndarray:
        run = {q: {p: float(len(orders[q]) - i) for i, p in enumerate(orders[q])} for q in qids}
        return per_query_array({q: qrels[q] for q in qids}, run, "nDCG@10", qids)

    base = ndcg({q: [p for p, _ in heads[q]] for q in test}, test)
    rows: dict[str, dict] = {}
    for depth in DEPTHS:
        alone = RerankedRetriever(served, cached, titles, depth=depth)
        w, _ = learn_weight({q: alone._rerank(SearchQuery(text=q), heads[q][:depth], depth) for q in stage},
                            {q: heads[q][:depth] for q in stage}, {q: qrels[q] for q in stage})
        blend = RerankedRetriever(served, cached, titles, depth=depth, blend=w)
        blended = ndcg({q: [p for p, _ in blend._rerank(SearchQuery(text=q), heads[q], top)] for q in test}, test)
        x = np.vstack([_features(q, heads[q][:depth], scores[q][:depth]) for q in stage])
        y = np.array([qrels[q].get(p, UNJUDGED_REL) for q in stage for p, _ in heads[q][:depth]], dtype=np.int32)
        model = lightgbm.train({**RESCORE_PARAMS, "min_data_in_leaf": 20, "lambdarank_truncation_level": 10,
                                "seed": 0}, lightgbm.Dataset(x, y, group=[len(heads[q][:depth]) for q in stage]), 50)
        stage2 = {}
        for q in test:
            head = heads[q][:depth]
            order = np.argsort(-model.predict(_features(q, head, scores[q][:depth])), kind="stable")
            stage2[q] = [head[i][0] for i in order] + [p for p, _ in heads[q][depth:]]
        second = ndcg(stage2, test)
        rows[str(depth)] = {"blend": w, "blend_nDCG@10": round(float(blended.mean()), 4),
                            "blend_gain": [round(v, 4) for v in paired_bootstrap(blended, base)],
                            "stage2_nDCG@10": round(float(second.mean()), 4),
                            "stage2_gain": [round(v, 4) for v in paired_bootstrap(second, base)],
                            "cross_encoder_ms_p50_p95": timed_ms(depth)}

    mean = [round(v, 4) for v in bootstrap_mean(base)]
    lines = ["# The cross-encoder over the served (rescored) order", "",
             f"Measured on {machine_description()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
             "Command: `.venv/bin/python benchmarks/bench_rerank_stage.py`.", "",
             f"{len(test)} held-out real Home Depot queries over {len(ids):,} products; dense side {label}; rescorer "
             f"learned as `skulens eval` learns it ({measured['kept']}); reranker {reranker}; blend and stage 2 "
             f"fitted on {len(stage)} other training queries. Rescored order: nDCG@10 {mean[0]:.4f} "
             f"[{mean[1]:.4f}, {mean[2]:.4f}].", "",
             "| depth | blend w | blend nDCG@10 | gain | stage 2 nDCG@10 | gain | cross-encoder ms a query p50 / p95 |",
             "|---:|---:|---:|---|---:|---|---:|"]
    for depth, r in rows.items():
        b, s = r["blend_gain"], r["stage2_gain"]
        lines.append(f"| {depth} | {r['blend']} | {r['blend_nDCG@10']:.4f} | {b[0]:+.4f} [{b[1]:+.4f}, {b[2]:+.4f}] | "
                     f"{r['stage2_nDCG@10']:.4f} | {s[0]:+.4f} [{s[1]:+.4f}, {s[2]:+.4f}] | "
                     f"{r['cross_encoder_ms_p50_p95'][0]} / {r['cross_encoder_ms_p50_p95'][1]} |")
    lines += ["", f"{time.perf_counter() - started:.0f} s in all."]
    write_report("rerank_stage", lines, {"machine": machine_description(), "rescored": mean, "depths": rows,
                                         "reranker": reranker, "rescore": measured})


if __name__ == "__main__":
    main()
