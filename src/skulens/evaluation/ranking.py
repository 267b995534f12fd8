"""Learn an index version's :class:`~skulens.retrieval.ranking.RankingPolicy` on training queries,
with the components that will serve it (the version's own vector store and BM25 index, the query
encoder of the embedder that built it, the champion reranker).

Queries, by what the catalogue has: its relevance judgments (the training split only, so that
``skulens eval``'s held-out queries stay unseen), else attribute queries over the whole catalogue
(``<gender> <colour> <article type>``, graded by the products' own attributes: the fashion case),
else nothing and the policy says it is a default. Learning scores the same functions the service
runs (``RankingPolicy.fuse`` / ``rerank``), so what was measured is what is served.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from skulens.evaluation.metrics import Qrels, evaluate
from skulens.retrieval.fusion import Hits, weighted
from skulens.retrieval.ranking import RankingPolicy

ATTRIBUTE_KEYS = ("article_type", "colour", "gender")
BLENDS = tuple(np.round(np.linspace(0, 1, 11), 2))
# An unjudged candidate's relevance when the rescorer learns (0-6 scale of the judgments; 1 is a
# Home Depot grade of 1.33 of 3): above a product judged irrelevant, below every judged relevant
# one. Unjudged is unknown, not irrelevant.
UNJUDGED_REL = 1


def learn_weight(dense: Mapping[str, Hits], lexical: Mapping[str, Hits], qrels: Mapping[str, Mapping[str, int]],
                 grid: Sequence[float] = tuple(np.round(np.linspace(0, 1, 21), 2)), measure: str = "nDCG@10"
                 ) -> tuple[float, dict[float, float]]:
    """The weight of :func:`weighted` that maximises ``measure`` over the queries of ``qrels``
    (ties: the weight nearest 0.5); returns it with the score of every weight tried."""
    queries = [q for q in qrels if q in dense or q in lexical]
    if not queries:
        raise ValueError("no training query has candidates to learn the fusion weight from")
    tried = {}
    for w in grid:
        run = {q: dict(weighted(dense.get(q, []), lexical.get(q, []), float(w))) for q in queries}
        tried[float(w)] = evaluate({q: dict(qrels[q]) for q in queries}, run, [measure])[measure]
    best = max(tried, key=lambda w: (round(tried[w], 6), -abs(w - 0.5)))
    return best, tried


def judged_queries(judgments: pa.Table, known: set[str], split_of: Callable[[list[str]], dict[str, str]],
                   split: str, limit: int, seed: int) -> tuple[dict[str, str], Qrels]:
    """Query texts and graded qrels of one split of a judgments table (products in ``known`` only)."""
    from skulens.evaluation.harness import to_rel

    qrels: Qrels = {}
    for row in judgments.to_pylist():
        if row["product_id"] in known:
            qrels.setdefault(row["query"], {})[row["product_id"]] = to_rel(row["grade"], row["source"])
    splits = split_of(sorted(qrels))
    chosen = sorted(q for q in qrels if splits.get(q) == split and any(g > 0 for g in qrels[q].values()))
    if len(chosen) > limit:
        chosen = sorted(random.Random(seed).sample(chosen, limit))
    return {q: q for q in chosen}, {q: qrels[q] for q in chosen}


_SPLIT_WORD = {"train": "training", "test": "held-out"}


def attribute_split(text: str) -> str:
    """``test`` for one query in five (by a stable hash of its text), else ``train``."""
    import hashlib

    return "test" if int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 5 == 0 else "train"


def attribute_queries(products: pa.Table, limit: int, seed: int, split: str = "train") -> tuple[dict[str, str], Qrels]:
    """``<gender> <colour> <article type>`` queries of one split over every product with those
    attributes; grade 3 when all three match, 2 for type and colour, 1 for the type alone."""
    rows = [dict(a or []) for a in products.column("attributes").to_pylist()]
    ids = products.column("product_id").to_pylist()
    keyed = [tuple((r.get(k) or "").lower() for k in ATTRIBUTE_KEYS) for r in rows]
    combos = sorted({key for key in keyed if all(key) and attribute_split(f"{key[2]} {key[1]} {key[0]}") == split})
    if len(combos) > limit:
        combos = sorted(random.Random(seed).sample(combos, limit))
    by_type: dict[str, list[int]] = {}
    for i, (article, _, _) in enumerate(keyed):
        by_type.setdefault(article, []).append(i)
    texts, qrels = {}, {}
    for n, (article, colour, gender) in enumerate(combos):
        qid = f"a{n}"
        texts[qid] = f"{gender} {colour} {article}"
        qrels[qid] = {ids[i]: 3 if keyed[i][1:] == (colour, gender) else 2 if keyed[i][1] == colour else 1
                      for i in by_type[article]}
    return texts, qrels


def learn_ranking(texts: Mapping[str, str], qrels: Qrels, *, encode: Callable[[list[str]], np.ndarray],
                  dense: Callable[[np.ndarray, int], list[Hits]], lexical: Callable[[str, int], Hits],
                  titles: Mapping[str, str], reranker: Callable[[str, list[str]], np.ndarray] | None,
                  source: str, max_depth: int = 20, depth: int = 100,
                  rerank_budget_ms: float | None = None, rescore: bool = True,
                  rerank_queries: int = 300, unjudged_rel: int = UNJUDGED_REL) -> RankingPolicy:
    """The fusion weight, then the rescorer of the fused head (kept only where it beats the fused
    order on queries it was not fitted on: :func:`learn_rescorer`; ``unjudged_rel``: what an
    ungraded candidate learns as, 0 where the grades are exhaustive), then the rerank depth and blend
    (on the first ``rerank_queries`` queries: the cross-encoder is the costly part), that maximise
    nDCG@10 on ``qrels``.

    ``rerank_budget_ms``: only depths whose reranking fits this budget are tried: the reranker is
    timed here at each depth on up to 30 queries (95th percentile), so that the served stage
    finishes inside its timeout instead of timing out and falling back."""
    qids = [q for q in texts if qrels.get(q)]
    if not qids:
        raise ValueError("no training query with a judged product to learn the ranking from")
    vectors = encode([texts[q] for q in qids])
    dense_hits = dict(zip(qids, dense(vectors, depth), strict=True))
    lexical_hits = {q: lexical(texts[q], depth) for q in qids}
    weight, tried = learn_weight(dense_hits, lexical_hits, {q: qrels[q] for q in qids})
    measured: dict[str, Any] = {"queries": len(qids), "fusion_weight_nDCG@10": tried}
    adaptive, measured["adaptive_fusion"] = learn_adaptive({q: texts[q] for q in qids}, dense_hits, lexical_hits,
                                                           qrels)
    fused_policy = RankingPolicy(fusion_weight=weight, learned_on=source, adaptive=adaptive)
    fused = {q: fused_policy.fuse(dense_hits[q], lexical_hits[q], texts[q]) for q in qids}
    fused_ndcg = _ndcg(qrels, fused, qids)
    measured["fused_nDCG@10"] = fused_ndcg
    rescorer = None
    if rescore:
        rescorer, measured["rescore"] = learn_rescorer(texts, qrels, fused, dense_hits, lexical_hits, titles,
                                                       depth=depth, unjudged_rel=unjudged_rel)
    else:
        measured["rescore"] = {"kept": "no: not asked"}
    if rescorer is not None:
        fused = {q: rescorer.rescore(texts[q], fused[q], dense_hits[q], lexical_hits[q], titles) for q in qids}
    qids = qids[:rerank_queries]
    fused_ndcg = _ndcg(qrels, fused, qids)
    if reranker is None:
        measured["rerank"] = "no reranker passed its gate: nothing to learn"
        return RankingPolicy(fusion_weight=weight, rerank_depth=max_depth, rerank_blend=0.0,
                             learned_on=source, measured=measured, adaptive=adaptive, rescorer=rescorer)
    # Each query's head is scored once, at the deepest depth tried; shallower depths reuse it.
    scored = {q: np.asarray(reranker(texts[q], [titles.get(p, "") for p, _ in fused[q][:max_depth]]), dtype=float)
              for q in qids}
    depths = sorted({min(d, max_depth) for d in (5, 10, 20, 30, max_depth)})
    if rerank_budget_ms is not None:
        p95 = {d: _rerank_p95_ms(reranker, [(texts[q], [titles.get(p, "") for p, _ in fused[q][:d]])
                                            for q in qids[:30]]) for d in depths}
        depths = [d for d in depths if p95[d] <= rerank_budget_ms]
        measured["rerank_latency"] = {"p95_ms": {str(d): round(v, 1) for d, v in p95.items()},
                                      "budget_ms": rerank_budget_ms, "depths_in_budget": depths}
        if not depths:
            measured["rerank"] = f"no rerank depth fits {rerank_budget_ms} ms (p95 at depth " \
                                 f"{min(p95)}: {p95[min(p95)]:.1f} ms): not run"
            return RankingPolicy(fusion_weight=weight, rerank_depth=max_depth, rerank_blend=0.0,
                                 learned_on=source, measured=measured, adaptive=adaptive, rescorer=rescorer)
    best = (fused_ndcg, depths[-1], 0.0)
    grid: dict[str, float] = {}
    for d in depths:
        for blend in BLENDS:
            policy = RankingPolicy(fusion_weight=weight, rerank_depth=d, rerank_blend=float(blend), learned_on=source,
                                   adaptive=adaptive, rescorer=rescorer)
            run = {q: policy.rerank(fused[q][:d], scored[q][:len(fused[q][:d])]) + fused[q][d:] for q in qids}
            score = _ndcg(qrels, run, qids)
            grid[f"depth {d}, blend {blend}"] = round(score, 5)
            if score > best[0] + 1e-9:
                best = (score, d, float(blend))
    measured.update({"rerank_grid_nDCG@10": grid, "reranked_nDCG@10": best[0]})
    return RankingPolicy(fusion_weight=weight, rerank_depth=best[1], rerank_blend=best[2], learned_on=source,
                         measured=measured, adaptive=adaptive, rescorer=rescorer)


RESCORE_PARAMS = {"objective": "lambdarank", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 50,
                  "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1,
                  "lambdarank_truncation_level": 20, "num_threads": 2, "deterministic": True, "verbose": -1}
RESCORE_ROUNDS = 200


def _rescore_features(qids: Sequence[str], texts: Mapping[str, str], fused: Mapping[str, Hits],
                      dense: Mapping[str, Hits], lexical: Mapping[str, Hits], titles: Mapping[str, str], idf: Any,
                      depth: int) -> dict[str, np.ndarray]:
    """Each query's feature block (its fused top ``depth``), computed once for every fit and score."""
    from skulens.retrieval.rescore import candidate_features

    return {q: candidate_features(texts[q], fused[q][:depth], dense.get(q, []), lexical.get(q, []), titles, idf)
            for q in qids}


def _fit_rescorer(qids: Sequence[str], blocks: Mapping[str, np.ndarray], qrels: Qrels, fused: Mapping[str, Hits],
                  unjudged_rel: int, seed: int, features: Sequence[str]) -> Any:
    """A LambdaMART booster on the ``features`` columns of the feature blocks of ``qids``; ungraded
    candidates at ``unjudged_rel``."""
    import lightgbm

    from skulens.retrieval.rescore import feature_columns

    x = np.vstack([blocks[q] for q in qids])[:, feature_columns(features)]
    y = np.asarray([qrels[q].get(pid, unjudged_rel) for q in qids for pid, _ in fused[q][:len(blocks[q])]],
                   dtype=np.int32)
    data = lightgbm.Dataset(x, y, group=[len(blocks[q]) for q in qids], feature_name=list(features),
                            free_raw_data=False)
    return lightgbm.train({**RESCORE_PARAMS, "seed": seed}, data, RESCORE_ROUNDS)


def learn_rescorer(texts: Mapping[str, str], qrels: Qrels, fused: Mapping[str, Hits], dense: Mapping[str, Hits],
                   lexical: Mapping[str, Hits], titles: Mapping[str, str], *, depth: int = 100, folds: int = 2,
                   min_queries: int = 100, seed: int = 0, unjudged_rel: int = UNJUDGED_REL,
                   features: Sequence[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """A :class:`~skulens.retrieval.rescore.Rescorer` of the fused top ``depth``, or None, with
    what learning measured.

    Gate: cross-fitted on ``folds`` folds of the training queries (each fold scored by a model that
    never saw it), the rescored order must beat the fused order's nDCG@10 on those queries;
    only then is the model refitted on all of them and returned. Candidates no judgment grades
    learn as ``unjudged_rel`` (:data:`UNJUDGED_REL` for sparse human judgments; 0 where every
    product was graded, as attribute queries grade the whole catalogue). ``features``: the columns
    of :data:`~skulens.retrieval.rescore.FEATURES` it learns on (all of them by default)."""
    from skulens.retrieval.rescore import FEATURES, Idf, Rescorer

    features = FEATURES if features is None else tuple(features)
    if not features or len(set(features)) != len(features):
        raise ValueError(f"the rescorer needs distinct features to learn on, got {list(features)}")
    qids = sorted(q for q in texts if qrels.get(q) and fused.get(q))
    measured: dict[str, Any] = {"queries": len(qids), "depth": depth, "unjudged_rel": unjudged_rel,
                                "features": len(features)}
    if len(qids) < min_queries:
        measured["kept"] = f"no: {len(qids)} training queries, fewer than {min_queries}"
        return None, measured
    idf = Idf.from_titles(titles.values())
    blocks = _rescore_features(qids, texts, fused, dense, lexical, titles, idf, depth)
    rng = random.Random(seed)
    shuffled = qids[:]
    rng.shuffle(shuffled)
    assigned = {q: i % folds for i, q in enumerate(shuffled)}
    rescored: dict[str, Hits] = {}
    for fold in range(folds):
        fit = [q for q in qids if assigned[q] != fold]
        held = [q for q in qids if assigned[q] == fold]
        model = Rescorer(_fit_rescorer(fit, blocks, qrels, fused, unjudged_rel, seed, features), depth, idf, features)
        for q in held:
            rescored[q] = model.reorder(fused[q], model.predict(blocks[q]))
    before, after = _ndcg(qrels, fused, qids), _ndcg(qrels, rescored, qids)
    measured.update({"cross_fitted_fused_nDCG@10": round(before, 5), "cross_fitted_rescored_nDCG@10": round(after, 5),
                     "folds": folds})
    if after <= before:
        measured["kept"] = f"no: rescored {after:.4f} <= fused {before:.4f} on queries it was not fitted on"
        return None, measured
    measured["kept"] = f"yes: rescored {after:.4f} > fused {before:.4f} on queries it was not fitted on"
    return Rescorer(_fit_rescorer(qids, blocks, qrels, fused, unjudged_rel, seed, features), depth, idf,
                    features), measured


def _rerank_p95_ms(reranker: Callable[[str, list[str]], np.ndarray], calls: list[tuple[str, list[str]]]) -> float:
    """95th percentile of the reranker's milliseconds over ``calls`` (query, candidate titles)."""
    times = []
    for text, heads in calls:
        started = time.perf_counter()
        reranker(text, heads)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 95)) if times else 0.0


def _rank_run(runs: Mapping[str, Hits], qids: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each query's hits scored by their rank (the order decides, never ties of fused scores)."""
    return {q: {pid: float(len(runs[q]) - rank) for rank, (pid, _) in enumerate(runs[q])} for q in qids}


def _ndcg(qrels: Qrels, runs: Mapping[str, Hits], qids: Sequence[str]) -> float:
    return float(evaluate({q: dict(qrels[q]) for q in qids}, _rank_run(runs, qids), ["nDCG@10"])["nDCG@10"])


def ranking_queries(settings: Any, catalog: str, products: pa.Table, limit: int = 300, seed: int = 0,
                    split: str = "train") -> tuple[dict[str, str], Qrels, str] | None:
    """Queries of one split for a catalogue's ranking: ``train`` to learn it, ``test`` for
    ``skulens eval``'s held-out figures. Its judgments' split, else attribute queries over its
    products (split by a hash of the query), else None."""
    from skulens.data.catalog import catalog_dir
    from skulens.evaluation.harness import EvalConfig, query_splits

    known = set(products.column("product_id").to_pylist())
    try:
        path = catalog_dir(settings, catalog) / "judgments.parquet"
    except FileNotFoundError:
        path = None
    if path is not None and path.is_file():
        import pyarrow.parquet as pq

        cfg = EvalConfig()
        texts, qrels = judged_queries(pq.read_table(path), known,
                                      lambda queries: query_splits(settings, queries, cfg.test_fraction, cfg.seed),
                                      split, limit, seed)
        if texts:
            return texts, qrels, f"{len(texts)} {_SPLIT_WORD[split]} queries of the {catalog} judgments (real, graded)"
    texts, qrels = attribute_queries(products, limit, seed, split)
    if texts:
        return texts, qrels, (f"{len(texts)} {_SPLIT_WORD[split]} attribute-derived queries (<gender> <colour> "
                              f"<article type>) over the {catalog} catalogue, not real shopper queries")
    return None


def per_weight_ndcg(dense: Mapping[str, Hits], lexical: Mapping[str, Hits], qrels: Qrels, qids: Sequence[str],
                    grid: Sequence[float]) -> np.ndarray:
    """nDCG@10 of each query (rows) fused at each weight of ``grid`` (columns)."""
    from skulens.evaluation.metrics import per_query

    matrix = np.zeros((len(qids), len(grid)))
    judged = {q: dict(qrels[q]) for q in qids}
    for j, w in enumerate(grid):
        runs = {q: weighted(dense.get(q, []), lexical.get(q, []), float(w)) for q in qids}
        values = per_query(judged, _rank_run(runs, qids), "nDCG@10")
        matrix[:, j] = [values.get(q, 0.0) for q in qids]
    return matrix


def fit_adaptive(features: np.ndarray, gains: np.ndarray, grid: Sequence[float], *, l2: float = 0.01):
    """A softmax policy over ``grid`` that maximises the expected gain (``gains[q, j]``: query q's
    nDCG@10 at weight j) from standardised ``features``, with an L2 penalty on the feature weights
    (L-BFGS). It starts from the single best weight, so a weak signal leaves that choice in place."""
    from scipy.optimize import minimize

    from skulens.retrieval.ranking import AdaptiveWeight

    mean = features.mean(axis=0)
    scale = np.where(features.std(axis=0) > 1e-9, features.std(axis=0), 1.0)
    x = (features - mean) / scale
    n, d = x.shape
    k = len(grid)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        coef, bias = theta[:d * k].reshape(d, k), theta[d * k:]
        logits = x @ coef + bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        expected = (p * gains).sum(axis=1, keepdims=True)
        grad_logits = p * (gains - expected) / n  # d(mean expected gain)/d(logits)
        value = -float(expected.mean()) + 0.5 * l2 * float((coef ** 2).sum())
        grad = np.concatenate([(-(x.T @ grad_logits) + l2 * coef).ravel(), -grad_logits.sum(axis=0)])
        return value, grad

    start_bias = 10.0 * (gains.mean(axis=0) - gains.mean(axis=0).max()) / max(float(gains.std()), 1e-6)
    theta = minimize(objective, np.concatenate([np.zeros(d * k), start_bias]), jac=True, method="L-BFGS-B",
                     options={"maxiter": 500}).x
    coef, bias = theta[:d * k].reshape(d, k), theta[d * k:]
    return AdaptiveWeight(grid=tuple(float(w) for w in grid), mean=tuple(float(v) for v in mean),
                          scale=tuple(float(v) for v in scale), coef=tuple(tuple(float(v) for v in r) for r in coef),
                          bias=tuple(float(v) for v in bias))


def learn_adaptive(texts: Mapping[str, str], dense: Mapping[str, Hits], lexical: Mapping[str, Hits], qrels: Qrels,
                   *, grid: Sequence[float] = tuple(np.round(np.linspace(0, 1, 11), 2)), folds: int = 5,
                   min_gain: float = 0.003, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A per-query fusion weight, kept only if it beats the single best weight on held-out folds.

    The training queries are split in ``folds``; on each, a policy fitted on the others is compared
    with the single weight that is best on the others. The adaptive policy (then fitted on every
    query) is returned only when its mean nDCG@10 over the held-out folds is at least ``min_gain``
    above the single weight's and it wins in most folds; else None. The second value says what was
    measured either way."""
    from skulens.retrieval.ranking import query_features

    qids = [q for q in texts if qrels.get(q)]
    if len(qids) < 10 * folds:
        return None, {"adaptive": f"not learned: {len(qids)} training queries, fewer than {10 * folds}"}
    features = np.stack([query_features(texts[q], lexical.get(q, [])) for q in qids])
    gains = per_weight_ndcg(dense, lexical, qrels, qids, grid)
    order = np.random.default_rng(seed).permutation(len(qids))
    adaptive_scores, single_scores = [], []
    for fold in range(folds):
        held = order[fold::folds]
        fit = np.setdiff1d(order, held)
        policy = fit_adaptive(features[fit], gains[fit], grid)
        chosen = np.argmax(policy.scores(features[held]), axis=1)
        adaptive_scores.append(float(gains[held, chosen].mean()))
        single_scores.append(float(gains[held, int(np.argmax(gains[fit].mean(axis=0)))].mean()))
    gain = float(np.mean(adaptive_scores) - np.mean(single_scores))
    wins = sum(a > s for a, s in zip(adaptive_scores, single_scores, strict=True))
    measured = {"queries": len(qids), "folds": folds, "cv_adaptive_nDCG@10": round(float(np.mean(adaptive_scores)), 5),
                "cv_single_weight_nDCG@10": round(float(np.mean(single_scores)), 5), "cv_gain": round(gain, 5),
                "folds_won": wins, "oracle_nDCG@10": round(float(gains.max(axis=1).mean()), 5),
                "min_gain": min_gain}
    if gain < min_gain or wins <= folds // 2:
        measured["adaptive"] = (f"not kept: {gain:+.4f} nDCG@10 over the single weight on held-out folds "
                                f"(needs {min_gain:+.4f}, won {wins} of {folds})")
        return None, measured
    policy = fit_adaptive(features, gains, grid)
    chosen = np.argmax(policy.scores(features), axis=1)
    measured["adaptive"] = (f"kept: {gain:+.4f} nDCG@10 over the single weight on held-out folds "
                            f"(won {wins} of {folds})")
    measured["weights_chosen"] = {f"{w:g}": int((chosen == j).sum()) for j, w in enumerate(grid)}
    return policy, measured
