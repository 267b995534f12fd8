"""Scorers compared over each held-out query's judged candidates (the rerank setting): the
cross-encoder, its baselines, its exported files."""

from __future__ import annotations

from typing import Any

from skulens.evaluation.metrics import evaluate, zero_useful_rate


def grade_to_rel(grade: float) -> int:
    """Home Depot's averaged 1-3 grades as integer relevance 0-6."""
    return max(0, round((grade - 1.0) * 3))


def evaluate_rankers(groups: dict[str, list], scorers: dict[str, Any]) -> dict[str, dict[str, float]]:
    """nDCG@10 / MRR / zero-useful rate of each scorer over each query's judged candidates."""
    qrels = {q: {p: grade_to_rel(g) for p, _, g in cands} for q, cands in groups.items()}
    out = {}
    for name, scorer in scorers.items():
        run = {}
        for q, cands in groups.items():
            scores = scorer(q, [t for _, t, _ in cands])
            run[q] = {p: float(s) for (p, _, _), s in zip(cands, scores, strict=True)}
        metrics = evaluate(qrels, run, ["nDCG@10", "RR(rel=4)"])
        metrics["zero_useful@10"] = zero_useful_rate(qrels, run, k=10, min_grade=4)
        out[name] = metrics
    return out
