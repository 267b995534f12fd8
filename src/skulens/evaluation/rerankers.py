"""Scorers compared over each held-out query's judged candidates (the rerank setting): the
cross-encoder, its baselines, its exported files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from skulens.evaluation.metrics import Qrels, Run, evaluate, zero_useful_rate
from skulens.evaluation.ranking import BLENDS, _rank_run
from skulens.retrieval.fusion import Hits
from skulens.retrieval.ranking import RankingPolicy


def grade_to_rel(grade: float) -> int:
    """Home Depot's averaged 1-3 grades as integer relevance 0-6."""
    return max(0, round((grade - 1.0) * 3))


def _qrels(groups: dict[str, list]) -> Qrels:
    return {q: {p: grade_to_rel(g) for p, _, g in cands} for q, cands in groups.items()}


def _metrics(qrels: Qrels, run: Run) -> dict[str, float]:
    """nDCG@10, MRR and zero-useful@10 (judged-only qrels: an unjudged result counts as irrelevant)."""
    metrics = evaluate(qrels, run, ["nDCG@10", "RR(rel=4)"])
    metrics["zero_useful@10"] = zero_useful_rate(qrels, run, k=10, min_grade=4)
    return metrics


def evaluate_rankers(groups: dict[str, list], scorers: dict[str, Any]) -> dict[str, dict[str, float]]:
    """nDCG@10 / MRR / zero-useful rate of each scorer over each query's judged candidates."""
    qrels = _qrels(groups)
    out = {}
    for name, scorer in scorers.items():
        run = {}
        for q, cands in groups.items():
            scores = scorer(q, [t for _, t, _ in cands])
            run[q] = {p: float(s) for (p, _, _), s in zip(cands, scores, strict=True)}
        out[name] = _metrics(qrels, run)
    return out


def _scores(qrels: Qrels, runs: dict[str, Hits]) -> dict[str, float]:
    """:func:`_metrics` of rank-ordered runs (the order decides, not the scores' scale)."""
    return _metrics(qrels, _rank_run(runs, list(runs)))


def _heads(groups: dict[str, list], retrieve: Callable[[str, int], Hits], titles: dict[str, str],
           scorer: Callable[[str, list[str]], np.ndarray], depth: int) -> dict[str, tuple[Hits, np.ndarray]]:
    heads = {q: retrieve(q, depth) for q in groups}
    return {q: (hits, np.asarray(scorer(q, [titles.get(p, "") for p, _ in hits]) if hits else [], dtype=float))
            for q, hits in heads.items()}


def evaluate_full_corpus(val: dict[str, list], test: dict[str, list], retrieve: Callable[[str, int], Hits],
                         titles: dict[str, str], scorer: Callable[[str, list[str]], np.ndarray], depth: int
                         ) -> dict[str, Any]:
    """What the served reranker changes over the whole catalogue: each query's retrieved top
    ``depth`` (``retrieve(query, k)``) reordered by ``scorer`` and blended with the retriever's
    scores as serving does (:meth:`RankingPolicy.rerank`), the blend learned on the ``val`` queries
    and measured on the ``test`` ones, against the retriever's own order (``bm25``) and the
    scorer's order alone."""
    def reranked(heads: dict[str, tuple[Hits, np.ndarray]], blend: float) -> dict[str, Hits]:
        policy = RankingPolicy(rerank_depth=depth, rerank_blend=blend)
        return {q: policy.rerank(hits, scores) if hits else [] for q, (hits, scores) in heads.items()}

    val_heads = _heads(val, retrieve, titles, scorer, depth)
    val_qrels, test_qrels = _qrels(val), _qrels(test)
    tried = {float(b): _scores(val_qrels, reranked(val_heads, float(b)))["nDCG@10"] for b in BLENDS}
    blend = max(tried, key=lambda b: (round(tried[b], 6), -b))  # ties: the smaller reranker share
    test_heads = _heads(test, retrieve, titles, scorer, depth)
    return {"bm25": _scores(test_qrels, {q: hits for q, (hits, _) in test_heads.items()}),
            "cross_encoder": _scores(test_qrels, reranked(test_heads, blend)),
            "cross_encoder_alone": _scores(test_qrels, reranked(test_heads, 1.0)),
            "blend": blend, "blend_nDCG@10_val": tried, "depth": depth,
            "queries": {"val": len(val), "test": len(test)}}
