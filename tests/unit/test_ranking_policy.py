"""The learned ranking policy: learned from training queries, stored with the index version, and
applied by the serving pipeline through the same functions learning scored."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from skulens.evaluation.ranking import attribute_queries, attribute_split, learn_ranking
from skulens.retrieval.ranking import RankingPolicy
from skulens.serving.pipeline import SearchPipeline, SearchRequest, ServingConfig
from tests.unit.test_serving_pipeline import parts  # noqa: F401 - the fixture

DOCS = [f"d{i}" for i in range(30)]


def _fixtures():
    """Query qi's relevant documents are d{i} (grade 2) and d{i+10} (grade 1). The dense side ranks
    them first; the lexical side buries them; the oracle reranker knows the grades."""
    rng = np.random.default_rng(0)
    texts = {f"q{i}": f"query {i}" for i in range(10)}
    qrels = {f"q{i}": {f"d{i}": 2, f"d{i + 10}": 1} for i in range(10)}

    def dense(vectors, k):
        out = []
        for v in vectors:
            i = int(v[0])
            good = [(f"d{i}", 0.9), (f"d{i + 10}", 0.8)]
            rest = [(d, float(s)) for d, s in zip(DOCS, rng.uniform(0, 0.5, len(DOCS)), strict=True)
                    if d not in dict(good)]
            out.append((good + sorted(rest, key=lambda h: -h[1]))[:k])
        return out

    def lexical(text, k):
        i = int(text.split()[1])
        return [(d, float(30 - n)) for n, d in enumerate(d for d in DOCS if d not in (f"d{i}", f"d{i + 10}"))][:k]

    def encode(batch):
        return np.array([[float(t.split()[1])] for t in batch])

    return texts, qrels, dense, lexical, encode


def test_learning_picks_the_better_side_and_a_useful_reranker():
    texts, qrels, dense, lexical, encode = _fixtures()
    titles = {d: d for d in DOCS}

    def oracle(text, cands):  # knows the grades
        i = int(text.split()[1])
        return np.array([2.0 if t == f"d{i}" else 1.0 if t == f"d{i + 10}" else 0.0 for t in cands])

    policy = learn_ranking(texts, qrels, encode=encode, dense=dense, lexical=lexical, titles=titles,
                           reranker=oracle, source="toy", max_depth=20)
    assert policy.fusion_weight >= 0.5  # the dense side is the one that finds the relevant documents
    assert policy.measured["reranked_nDCG@10"] >= policy.measured["fused_nDCG@10"]
    assert policy.learned and policy.learned_on == "toy"


def test_a_reranker_that_hurts_is_given_no_share():
    texts, qrels, dense, lexical, encode = _fixtures()

    def adversary(text, cands):
        i = int(text.split()[1])
        return np.array([-5.0 if t in (f"d{i}", f"d{i + 10}") else 1.0 for t in cands])

    policy = learn_ranking(texts, qrels, encode=encode, dense=dense, lexical=lexical, titles={d: d for d in DOCS},
                           reranker=adversary, source="toy", max_depth=20)
    assert policy.rerank_blend == 0.0  # the fused order alone: the service then does not run it


def test_the_policy_travels_with_the_version_and_defaults_say_so(tmp_path):
    policy = RankingPolicy(fusion_weight=0.3, rerank_depth=10, rerank_blend=0.6, learned_on="x")
    policy.save(tmp_path)
    assert RankingPolicy.load(tmp_path) == policy
    default = RankingPolicy.load(tmp_path / "nowhere")
    assert not default.learned and default.learned_on.startswith("default")


def test_the_pipeline_serves_the_policy_it_is_given(parts):  # noqa: F811
    config = ServingConfig(total_budget_ms=60_000, stage_timeout_ms={})
    request = SearchRequest.parse({"text": "red shirt", "k": 5}, config)
    lexical_only = SearchPipeline(**parts, config=config, ranking=RankingPolicy(fusion_weight=0.0, rerank_blend=0.0))
    dense_only = SearchPipeline(**parts, config=config, ranking=RankingPolicy(fusion_weight=1.0, rerank_blend=0.0))
    a, b = lexical_only.search(request), dense_only.search(request)
    by_bm25 = sorted(a.items, key=lambda i: -i["scores"].get("bm25", 0))
    assert [i["product_id"] for i in a.items] == [i["product_id"] for i in by_bm25]  # weight 0: BM25's order
    assert [i["product_id"] for i in b.items] == [i["product_id"] for i in sorted(
        b.items, key=lambda i: -i["scores"].get("dense", 0))]  # weight 1: the dense order
    # The reranker (it favours "black" titles) reorders only the policy's depth.
    shallow = SearchPipeline(**parts, config=config, ranking=RankingPolicy(fusion_weight=0.5, rerank_depth=1))
    assert [i["product_id"] for i in shallow.search(request).items] == \
        [i["product_id"] for i in SearchPipeline(**parts, config=config, ranking=RankingPolicy(
            fusion_weight=0.5, rerank_blend=0.0)).search(request).items]


def test_attribute_queries_split_train_and_test_apart():
    colours = ("red", "blue", "black", "green", "white")
    products = pa.table({"product_id": [f"p{i}" for i in range(60)],
                         "attributes": [[("article_type", t), ("colour", c), ("gender", g)]
                                        for t in ("shirts", "jeans", "watches") for c in colours
                                        for g in ("men", "women", "boys", "girls")]})
    train, _ = attribute_queries(products, 1000, 0, "train")
    test, qrels = attribute_queries(products, 1000, 0, "test")
    assert train and test and not set(train.values()) & set(test.values())
    assert all(attribute_split(t) == "test" for t in test.values())
    some = next(iter(qrels.values()))
    assert set(some.values()) <= {1, 2, 3} and 3 in some.values()
