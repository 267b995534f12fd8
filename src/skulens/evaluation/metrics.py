"""Relevance metrics computed by ir-measures (pytrec_eval backend), not by hand.

Qrels and runs are plain nested dicts: ``qrels[query_id][doc_id] = grade`` (int, 0 = not
relevant) and ``run[query_id][doc_id] = score``. Measure names are ir-measures syntax:
``nDCG@10``, ``R@10``, ``P@10``, ``RR`` (MRR when averaged), ``R(rel=2)@10`` for a grade threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def evaluate(qrels: Qrels, run: Run, measures: Sequence[str]) -> dict[str, float]:
    """Mean of each measure over the queries of ``qrels`` (a query missing from ``run`` scores 0)."""
    import ir_measures

    parsed = {m: ir_measures.parse_measure(m) for m in measures}
    name = {str(p): m for m, p in parsed.items()}  # ir-measures prints defaults away: RR(rel=1) is "RR"
    judged = {q: docs for q, docs in qrels.items() if any(g > 0 for g in docs.values())}
    per_query: dict[str, dict[str, float]] = {m: {} for m in measures}
    runs = {q: run.get(q, {}) for q in judged}
    # Judged@k divides by what the query retrieved: a query that retrieved nothing scores 0 here
    # (ir-measures would divide by zero).
    judged_share = [p for m, p in parsed.items() if m.startswith("Judged")]
    others = [p for m, p in parsed.items() if not m.startswith("Judged")]
    for measures_, subset in ((others, runs), (judged_share, {q: r for q, r in runs.items() if r})):
        if measures_:
            for metric in ir_measures.iter_calc(measures_, judged, subset):
                per_query[name[str(metric.measure)]][metric.query_id] = float(metric.value)
    return {m: (sum(per_query[m].values()) / len(judged)) if judged else 0.0 for m in measures}


def per_query(qrels: Qrels, run: Run, measure: str) -> dict[str, float]:
    """``measure`` of each judged query of ``qrels`` (0 for one missing from ``run``)."""
    import ir_measures

    judged = {q: docs for q, docs in qrels.items() if any(g > 0 for g in docs.values())}
    values = dict.fromkeys(judged, 0.0)
    for metric in ir_measures.iter_calc([ir_measures.parse_measure(measure)], judged,
                                        {q: run.get(q, {}) for q in judged}):
        values[metric.query_id] = float(metric.value)
    return values


def per_query_array(qrels: Qrels, run: Run, measure: str, query_ids: Sequence[str]) -> np.ndarray:
    """``measure`` of each of ``query_ids`` (judged queries of ``qrels``) in that order: per-query
    arrays of several runs in one order, as the paired intervals below need them."""
    values = per_query(qrels, run, measure)
    return np.array([values[q] for q in query_ids], dtype=np.float64)


def zero_useful_rate(qrels: Qrels, run: Run, k: int = 10, min_grade: int = 1) -> float:
    """Share of judged queries with no document of grade >= ``min_grade`` in their top ``k``: the
    complement of ir-measures' ``Success(rel=min_grade)@k`` over the queries that have one."""
    useful = {q: docs for q, docs in qrels.items() if any(g >= min_grade for g in docs.values())}
    if not useful:
        return 0.0
    measure = f"Success(rel={min_grade})@{k}"
    return 1.0 - evaluate(useful, run, [measure])[measure]


def dense_run(query_ids: Sequence[str], queries: np.ndarray, doc_ids: Sequence[str], docs: np.ndarray,
              k: int = 100, exclude: Sequence[str | None] | None = None, chunk: int = 1024) -> Run:
    """Exact inner-product top-``k`` for every query (``exclude[i]``: a doc id to skip, e.g. itself)."""
    doc_ids = list(doc_ids)
    index = {d: i for i, d in enumerate(doc_ids)}
    run: Run = {}
    k_eff = min(k + 1, len(doc_ids))
    for start in range(0, len(query_ids), chunk):
        scores = queries[start:start + chunk] @ docs.T
        if exclude is not None:
            for row, skip in enumerate(exclude[start:start + chunk]):
                if skip is not None and skip in index:
                    scores[row, index[skip]] = -np.inf
        top = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff] if k_eff < len(doc_ids) \
            else np.tile(np.arange(len(doc_ids)), (len(scores), 1))
        for row, cols in enumerate(top):
            qid = query_ids[start + row]
            pairs = [(doc_ids[c], float(scores[row, c])) for c in cols if np.isfinite(scores[row, c])]
            run[qid] = dict(sorted(pairs, key=lambda kv: -kv[1])[:k])
    return run


# -- intervals ---------------------------------------------------------------------------------
# Every interval resamples the same queries for both sides (paired): the question is whether one
# ranking beats another on these queries, and the queries' own difficulty cancels out.
RESAMPLES = 2000


def _resampled_rows(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, (resamples, n))


def bootstrap_mean(values: Sequence[float] | np.ndarray, resamples: int = RESAMPLES, seed: int = 17
                   ) -> tuple[float, float, float]:
    """Mean over queries and its 95% percentile-bootstrap interval."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("no per-query values to bootstrap")
    means = x[_resampled_rows(len(x), resamples, seed)].mean(1)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_bootstrap(after: Sequence[float] | np.ndarray, before: Sequence[float] | np.ndarray,
                     resamples: int = RESAMPLES, seed: int = 17) -> tuple[float, float, float]:
    """Mean difference ``after - before`` over queries and its 95% bootstrap interval."""
    a, b = np.asarray(after, dtype=np.float64), np.asarray(before, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired difference needs two equal per-query arrays, got {a.shape} and {b.shape}")
    return bootstrap_mean(a - b, resamples, seed)


def bootstrap_ratio(after: Sequence[float] | np.ndarray, before: Sequence[float] | np.ndarray,
                    resamples: int = RESAMPLES, seed: int = 17) -> tuple[float, float, float]:
    """``mean(after) / mean(before)`` (a "1.15 x BM25" figure) and its paired 95% bootstrap
    interval: each resample draws the same queries for both means."""
    a, b = np.asarray(after, dtype=np.float64), np.asarray(before, dtype=np.float64)
    if a.shape != b.shape or len(a) == 0:
        raise ValueError(f"paired ratio needs two equal, non-empty per-query arrays, got {a.shape} and {b.shape}")
    if b.mean() <= 0:
        raise ValueError("the baseline's mean is 0: a ratio to it is undefined")
    rows = _resampled_rows(len(a), resamples, seed)
    ratios = a[rows].mean(1) / np.maximum(b[rows].mean(1), 1e-12)
    return float(a.mean() / b.mean()), float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))
