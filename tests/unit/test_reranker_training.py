"""Reranker training inputs and its full-corpus evaluation (pure functions, no model)."""

import numpy as np

from skulens.evaluation.rerankers import evaluate_full_corpus
from skulens.training.reranker import NegativesConfig, with_retrieved_negatives

TITLES = {f"p{i}": f"title {i}" for i in range(20)}


def test_retrieved_negatives_add_only_unjudged_candidates_at_the_prior_grade():
    pairs = [("drill", "p1", "title 1", 3.0), ("drill", "p2", "title 2", 1.0), ("glue", "p3", "title 3", 2.0)]
    candidates = {"drill": ["p1", "p5", "p2", "p6", "p7", "p8"], "glue": ["p3"], "unknown": ["p9"]}
    cfg = NegativesConfig(depth=6, per_query=3, unjudged_grade=1.5)
    out, added = with_retrieved_negatives(pairs, candidates, TITLES, cfg, seed=1)
    extra = [row for row in out if row not in pairs]
    assert added == len(extra) == 3  # drill has four unjudged candidates, three taken; glue has none
    assert all(q == "drill" and p in {"p5", "p6", "p7", "p8"} and g == 1.5 for q, p, _, g in extra)
    assert set(pairs) <= set(out)  # judged pairs keep their grades
    assert with_retrieved_negatives(pairs, candidates, TITLES, cfg, seed=1) == (out, added)


def test_full_corpus_evaluation_learns_the_blend_on_validation_queries():
    # Each query retrieves four products; the relevant one (grade 3) is retrieved last, and a scorer
    # that recognises it lifts it to the top: the blend learned on val must give it the decisive share.
    groups = {q: [(f"p{n + 3}", "", 3.0), (f"p{n + 10}", "", 1.0)] for n, q in enumerate(["a", "b", "c"])}

    def retrieve(q, k):
        n = "abc".index(q)
        return [(f"p{n}", 4.0), (f"p{n + 1}", 3.0), (f"p{n + 2}", 2.0), (f"p{n + 3}", 1.0)][:k]

    def knows(q, titles):
        return np.array([1.0 if t == TITLES[f"p{'abc'.index(q) + 3}"] else 0.0 for t in titles])

    def random_scorer(q, titles):
        return np.zeros(len(titles))

    val, test = {k: groups[k] for k in "ab"}, {"c": groups["c"]}
    out = evaluate_full_corpus(val, test, retrieve, TITLES, knows, depth=4)
    assert out["bm25"]["nDCG@10"] < 0.5 and out["bm25"]["RR(rel=4)"] == 0.25
    assert out["cross_encoder"]["nDCG@10"] == 1.0 and out["blend"] > 0.5
    assert out["queries"] == {"val": 2, "test": 1}
    # A scorer with nothing to say gets the smallest share and leaves the retriever's order.
    flat = evaluate_full_corpus(val, test, retrieve, TITLES, random_scorer, depth=4)
    assert flat["blend"] == 0.0 and flat["cross_encoder"] == flat["bm25"]
