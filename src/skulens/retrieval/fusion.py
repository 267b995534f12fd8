"""Fusing ranked lists (dense and lexical candidates) and collapsing near-duplicate results.

* :func:`rrf` — reciprocal rank fusion, ``score(d) = sum_i w_i / (k + rank_i(d))``: needs no score
  calibration, so it is the safe default when the weights have not been learned.
* :func:`weighted` — convex combination of per-list min-max normalised scores,
  ``w * dense + (1 - w) * lexical``; a document missing from a list scores 0 there. The weight is
  learned on training queries (``skulens.evaluation.ranking.learn_weight``) and stored with the
  index version (:mod:`skulens.retrieval.ranking`).
* :func:`collapse_near_duplicates` — keeps the best of results whose vectors are nearly identical
  (same product listed twice, colour variants with the same photo).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Hits = list[tuple[str, float]]


def rrf(lists: Sequence[Hits], k: int = 60, weights: Sequence[float] | None = None) -> Hits:
    """Reciprocal rank fusion of ranked lists (best first); returns (id, fused score), best first."""
    weights = weights or [1.0] * len(lists)
    scores: dict[str, float] = {}
    for hits, w in zip(lists, weights, strict=True):
        for rank, (pid, _) in enumerate(hits, start=1):
            scores[pid] = scores.get(pid, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def _minmax(hits: Hits) -> dict[str, float]:
    if not hits:
        return {}
    values = np.array([s for _, s in hits], dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    span = high - low
    # One candidate, or all equal: they are all as good as this list gets.
    return {pid: (1.0 if span <= 0 else (s - low) / span) for pid, s in hits}


def weighted(dense: Hits, lexical: Hits, weight: float) -> Hits:
    """``weight * minmax(dense) + (1 - weight) * minmax(lexical)``, best first."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    d, lx = _minmax(dense), _minmax(lexical)
    scores = {pid: weight * d.get(pid, 0.0) + (1 - weight) * lx.get(pid, 0.0) for pid in d.keys() | lx.keys()}
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def collapse_near_duplicates(hits: Hits, vectors: Callable[[Sequence[str]], np.ndarray],
                             threshold: float = 0.995) -> Hits:
    """Drop every result whose vector has cosine >= ``threshold`` with a better one already kept."""
    if len(hits) < 2 or threshold >= 1.0 + 1e-9:
        return list(hits)
    vecs = vectors([pid for pid, _ in hits])
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs / np.where(norms == 0, 1, norms)
    kept: list[int] = []
    for i in range(len(hits)):
        if not kept or float(np.max(vecs[kept] @ vecs[i])) < threshold:
            kept.append(i)
    return [hits[i] for i in kept]
