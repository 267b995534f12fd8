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


def test_rerank_depth_is_learned_only_among_depths_that_fit_the_latency_budget():
    import time

    texts, qrels, dense, lexical, encode = _fixtures()
    titles = {d: d for d in DOCS}

    def slow_oracle(text, cands):  # 2 ms a candidate
        time.sleep(0.002 * len(cands))
        i = int(text.split()[1])
        return np.array([2.0 if t == f"d{i}" else 1.0 if t == f"d{i + 10}" else 0.0 for t in cands])

    policy = learn_ranking(texts, qrels, encode=encode, dense=dense, lexical=lexical, titles=titles,
                           reranker=slow_oracle, source="toy", max_depth=20, rerank_budget_ms=25.0)
    latency = policy.measured["rerank_latency"]
    assert latency["p95_ms"]["20"] >= 40.0 and 5 in latency["depths_in_budget"]
    assert 20 not in latency["depths_in_budget"]  # 20 x 2 ms is over 25 ms
    assert policy.rerank_depth in latency["depths_in_budget"]
    assert all(int(key.split()[1].rstrip(",")) in latency["depths_in_budget"]
               for key in policy.measured["rerank_grid_nDCG@10"])
    # A budget no depth fits: the reranker is not run, and the policy says why.
    none = learn_ranking(texts, qrels, encode=encode, dense=dense, lexical=lexical, titles=titles,
                         reranker=slow_oracle, source="toy", max_depth=20, rerank_budget_ms=1.0)
    assert none.rerank_blend == 0.0 and "not run" in none.measured["rerank"]


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


def _two_kinds_of_query(n: int = 200, seed: int = 0, telling: bool = True):
    """Half the queries name a size ("pipe 3/4 in 12"): BM25 ranks their relevant product first and
    the dense side buries it; for the other half ("garden hose 7") it is the other way round. No
    single fusion weight serves both; a per-query weight read from the query can. ``telling=False``:
    which side finds it is a coin toss that neither the text nor the BM25 scores reveal."""
    rng = np.random.default_rng(seed)
    texts, qrels, dense, lexical = {}, {}, {}, {}
    for i in range(n):
        q, good = f"q{i}", f"good{i}"
        others = [f"o{i}_{j}" for j in range(20)]
        sized = i % 2 == 0 if telling else bool(rng.integers(2))
        texts[q] = (f"pipe 3/4 in {i}" if sized else f"garden hose {i}") if telling else f"query {i}"
        shape = [10.0, *np.sort(rng.uniform(1, 9, 20))[::-1]]
        found = [(d, float(s)) for d, s in zip([good, *others], shape, strict=True)]
        buried = [(d, float(s)) for d, s in zip([*others[:15], good, *others[15:]], shape, strict=True)]
        if telling and not sized:
            buried = [(d, float(s)) for d, s in zip([*others[:15], good, *others[15:]],
                                                    np.sort(rng.uniform(5, 10, 21))[::-1], strict=True)]
        lexical[q], dense[q] = (found, buried) if sized else (buried, found)
        qrels[q] = {good: 2}
    return texts, qrels, dense, lexical


def test_a_per_query_weight_is_learned_where_one_weight_cannot_serve_both_kinds_of_query():
    from skulens.evaluation.ranking import learn_adaptive, learn_weight

    texts, qrels, dense, lexical = _two_kinds_of_query()
    single, _ = learn_weight(dense, lexical, qrels)
    adaptive, measured = learn_adaptive(texts, dense, lexical, qrels)
    assert adaptive is not None, measured
    assert measured["cv_gain"] > 0.2 and measured["folds_won"] == 5
    held_texts, held_qrels, held_dense, held_lexical = _two_kinds_of_query(60, seed=1)  # unseen queries
    policy = RankingPolicy(fusion_weight=single, adaptive=adaptive)
    for q in held_texts:
        hits = policy.fuse(held_dense[q], held_lexical[q], held_texts[q])
        assert hits[0][0] == f"good{q[1:]}", (held_texts[q], policy.weight_for(held_texts[q], held_lexical[q]))
    # Without the query's text the single learned weight fuses, as before.
    assert policy.weight_for(None, held_lexical["q0"]) == single


def test_a_per_query_weight_that_does_not_beat_one_weight_on_held_out_folds_is_not_kept():
    from skulens.evaluation.ranking import learn_adaptive

    texts, qrels, dense, lexical = _two_kinds_of_query(telling=False)
    adaptive, measured = learn_adaptive(texts, dense, lexical, qrels)
    assert adaptive is None and measured["adaptive"].startswith("not kept"), measured
    texts, qrels, dense, lexical = _two_kinds_of_query()
    few, _ = learn_adaptive(dict(list(texts.items())[:20]), dense, lexical, qrels)
    assert few is None


def test_an_adaptive_policy_travels_with_the_version_and_decides_lexical_only_queries(tmp_path):
    from skulens.evaluation.ranking import learn_adaptive

    texts, qrels, dense, lexical = _two_kinds_of_query()
    adaptive, _ = learn_adaptive(texts, dense, lexical, qrels)
    policy = RankingPolicy(fusion_weight=0.5, adaptive=adaptive, learned_on="toy")
    policy.save(tmp_path)
    loaded = RankingPolicy.load(tmp_path)
    assert loaded == policy and loaded.describe().startswith("fusion weight per query")
    sized, plain = "q0", "q1"
    assert loaded.weight_for(texts[sized], lexical[sized]) < 0.5 < loaded.weight_for(texts[plain], lexical[plain])
    if loaded.weight_for(texts[sized], lexical[sized]) == 0.0:  # the dense side cannot change this page
        assert loaded.lexical_decides(lexical[sized], 10, texts[sized]) is not None
    assert loaded.lexical_decides(lexical[plain], 10, texts[plain]) is None
    raw = policy.to_dict()
    raw["adaptive"]["features"] = ["log_words"]
    import pytest

    with pytest.raises(ValueError, match="relearn the index version's ranking"):
        RankingPolicy.from_dict(raw)
