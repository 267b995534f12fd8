"""The staged search pipeline: spelling, fusion, rerank, pagination, and every fallback flagged."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pyarrow as pa
import pytest

from skulens.data.contracts import PRODUCTS
from skulens.retrieval.filters import FilterColumns
from skulens.retrieval.lexical import BM25Index
from skulens.retrieval.vector_index import ShardedVectorIndex, VectorIndexConfig
from skulens.serving.pipeline import RequestError, SearchPipeline, SearchRequest, ServingConfig
from skulens.serving.spelling import SpellCorrector
from tests.unit.test_fusion import WordHashEncoder

CONFIG = ServingConfig()


def _catalogue():
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = [(f"p{i}", f"{colour} {kind} number{i}", kind, colour, float(10 + i)) for i, (colour, kind) in enumerate(
        (c, k) for c in ("red", "blue", "green", "black") for k in ("shirt", "dress", "sneaker", "handbag"))]
    products = pa.Table.from_pylist([
        {"product_id": pid, "title": title, "description": None, "brand": None, "category_path": [cat],
         "attributes": [("colour", colour)], "price": price, "currency": "USD", "image_uri": None, "updated_at": now}
        for pid, title, cat, colour, price in rows], schema=PRODUCTS)
    titles = {r[0]: r[1] for r in rows}
    return products, titles


@pytest.fixture
def parts():
    products, titles = _catalogue()
    encoder = WordHashEncoder()
    ids = list(titles)
    store = ShardedVectorIndex.build(ids, encoder.encode_texts(list(titles.values())), [None] * len(ids),
                                     VectorIndexConfig(kind="flat", min_shard_size=1, gate_queries=10),
                                     columns=FilterColumns.from_products(products))
    return {"lexical": BM25Index.build(products), "store": store, "encoder": encoder, "titles": titles,
            "spell": SpellCorrector.from_texts(titles.values()),
            "reranker": lambda q, cands: np.array([float("black" in t) for t in cands])}


def _search(pipeline, **raw):
    return pipeline.search(SearchRequest.parse(raw, CONFIG))


def test_search_corrects_spelling_fuses_reranks_and_pages(parts):
    pipeline = SearchPipeline(**parts, versions={"index": "v1"})
    result = _search(pipeline, text="red shrit", k=3)
    assert result.query == "red shirt" and result.rewrites == [{"kind": "spelling", "from": "shrit", "to": "shirt"}]
    assert result.fallbacks == [] and {s.name: s.status for s in result.stages} == {
        "normalise": "ok", "encode": "ok", "retrieve": "ok", "rerank": "ok", "ltr": "skipped", "rules": "ok"}
    top = result.items[0]
    assert "black" in top["title"] and {"bm25", "fused", "rerank"} <= set(top["scores"])  # the reranker's pick
    second = _search(pipeline, text="red shirt", k=3, page=2)
    assert not {i["product_id"] for i in second.items} & {i["product_id"] for i in _search(
        pipeline, text="red shirt", k=3).items}
    filtered = _search(pipeline, text="shirt", k=10, filters={"attributes": {"colour": "green"}})
    assert filtered.items and {i["title"].split()[0] for i in filtered.items} == {"green"}
    assert result.to_dict()["versions"] == {"index": "v1"}


class SlowEncoder(WordHashEncoder):
    def encode_texts(self, texts):
        time.sleep(0.3)
        return super().encode_texts(texts)


def test_late_or_failing_stages_fall_back_and_say_so(parts):
    slow = SearchPipeline(**{**parts, "encoder": SlowEncoder()},
                          config=ServingConfig(stage_timeout_ms={"encode": 50.0}, total_budget_ms=1000))
    result = _search(slow, text="blue dress")
    assert "lexical_only" in result.fallbacks and result.items
    assert next(s for s in result.stages if s.name == "encode").detail.startswith("late")
    assert all("dense" not in i["scores"] for i in result.items)

    def broken(query, titles):
        raise RuntimeError("reranker crashed")
    failing = SearchPipeline(**{**parts, "reranker": broken})
    result = _search(failing, text="blue dress")
    assert result.fallbacks == ["retrieval_order"] and result.items
    assert "reranker crashed" in next(s for s in result.stages if s.name == "rerank").detail

    def slow_rerank(query, titles):
        time.sleep(0.3)
        return np.zeros(len(titles))
    late = SearchPipeline(**{**parts, "reranker": slow_rerank}, config=ServingConfig(total_budget_ms=100))
    assert _search(late, text="blue dress").fallbacks == ["retrieval_order"]


@pytest.mark.parametrize(("raw", "message"), [
    ({}, "a text, a photo or both"),
    ({"text": "   "}, "a text, a photo or both"),
    ({"text": "x" * 100_000}, "at most 512"),
    ({"text": "a", "k": 0}, "k must be an integer from 1 to 100"),
    ({"text": "a", "k": 10_000}, "k must be an integer"),
    ({"text": "a", "k": True}, "k must be an integer"),
    ({"text": "a", "page": -1}, "page must be"),
    ({"text": "a", "filters": {"colour": "red"}}, "unknown filter colour"),
    ({"text": "a", "sort": "price"}, "unknown field"),
    ({"text": 5}, "text must be a string"),
])
def test_bad_requests_are_named(raw, message):
    with pytest.raises(RequestError, match=message):
        SearchRequest.parse(raw, CONFIG)


def test_spelling_leaves_known_words_numbers_and_codes_alone():
    spell = SpellCorrector.from_texts(["Cordless Hammer Drill 20V", "Drill Bits"])
    assert spell.correct("cordles hammer drill 20v") == ("cordless hammer drill 20v", [("cordles", "cordless")])
    assert spell.correct("3/4 in drill") == ("3/4 in drill", [])
    assert spell.correct("zzzzzzzz")[1] == []


def test_the_same_product_listed_twice_is_collapsed(parts):
    class TwinStore:
        def search(self, vectors, k, filters=None, exclude=()):
            return [[("a", 0.9), ("a-copy", 0.89), ("b", 0.5)]]

        def vectors(self, ids):
            table = {"a": [1.0, 0.0], "a-copy": [1.0, 0.0], "b": [0.0, 1.0]}
            return np.array([table[i] for i in ids], dtype=np.float32)

    class NoLexical:
        def search(self, text, k, filters=None, exclude=()):
            return []

    pipeline = SearchPipeline(lexical=NoLexical(), store=TwinStore(), encoder=parts["encoder"],
                              titles={"a": "A", "a-copy": "A", "b": "B"})
    result = pipeline.search(SearchRequest.parse({"image": None, "text": "anything", "k": 3}, CONFIG))
    assert [i["product_id"] for i in result.items] == ["a", "b"]
    assert {"kind": "collapsed_duplicates", "dropped": 1} in result.rewrites


def test_rerank_is_shed_under_overload(parts):
    busy = SearchPipeline(**parts, config=ServingConfig(shed_rerank_above=0))  # every search counts as overload
    result = _search(busy, text="red shirt", k=3)
    assert result.fallbacks == ["rerank_shed"] and all("rerank" not in i["scores"] for i in result.items)
    calm = SearchPipeline(**parts, config=ServingConfig(shed_rerank_above=None))
    assert _search(calm, text="red shirt", k=3).fallbacks == []


def test_batched_encoder_and_reranker_rank_as_the_plain_ones_under_concurrent_searches(parts):
    from concurrent.futures import ThreadPoolExecutor

    from skulens.serving.batching import BatchedEncoder, BatchedReranker

    sizes = []
    plain = SearchPipeline(**parts)
    # the scorer takes one query per pair, as the ONNX and PyTorch rerankers do
    encoder = BatchedEncoder(parts["encoder"], on_batch=lambda model, size: sizes.append(size))
    reranker = BatchedReranker(lambda qs, ts: parts["reranker"](qs[0], ts))
    # This test is about the batched order, not budgets: no stage timeout, so a loaded CI machine
    # cannot turn a slow batch into a fallback (the timeouts have their own tests above).
    untimed = ServingConfig(total_budget_ms=60_000, stage_timeout_ms={})
    batched = SearchPipeline(**{**parts, "encoder": encoder, "reranker": reranker}, config=untimed)
    queries = [f"{c} {k}" for c in ("red", "blue", "green", "black") for k in ("shirt", "dress", "sneaker")] * 2
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: _search(batched, text=q, k=5), queries))
    for query, result in zip(queries, together, strict=True):
        assert result.fallbacks == []
        alone = _search(plain, text=query, k=5)
        assert [i["product_id"] for i in result.items] == [i["product_id"] for i in alone.items]
    assert sum(sizes) == len(queries) - sum(r.cache.get("query_vector") == "hit" for r in together)
    batched.close()


def test_the_query_vector_cache_can_be_switched_off(parts):
    calls = []

    class Counting(WordHashEncoder):
        def encode_texts(self, texts):
            calls.append(list(texts))
            return super().encode_texts(texts)

    cached = SearchPipeline(**{**parts, "encoder": Counting()})
    uncached = SearchPipeline(**{**parts, "encoder": Counting()}, config=ServingConfig(vector_cache_size=0))
    for pipeline in (cached, uncached):
        calls.clear()
        first, again = _search(pipeline, text="red dress"), _search(pipeline, text="red dress")
        assert [i["product_id"] for i in first.items] == [i["product_id"] for i in again.items]
        assert len(calls) == (1 if pipeline is cached else 2)
    assert again.cache == {}


class _CountingEncoder(WordHashEncoder):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def encode_texts(self, texts):
        self.calls += 1
        return super().encode_texts(texts)


class _AlwaysFused(SearchPipeline):
    def _lexical_decides(self, *args, **kwargs):
        return None, None


def test_with_a_zero_fusion_weight_bm25_alone_decides_a_full_page_and_it_is_the_fused_page(parts):
    from skulens.retrieval.ranking import RankingPolicy

    policy = RankingPolicy(fusion_weight=0.0, learned_on="test: BM25 won on the training queries")
    shortcut = SearchPipeline(**{**parts, "encoder": _CountingEncoder(), "reranker": None}, ranking=policy)
    full = _AlwaysFused(**{**parts, "encoder": _CountingEncoder(), "reranker": None}, ranking=policy)
    for query, k in (("red shirt", 2), ("black handbag", 2), ("green", 1)):
        fast, slow = _search(shortcut, text=query, k=k), _search(full, text=query, k=k)
        assert [i["product_id"] for i in fast.items] == [i["product_id"] for i in slow.items]
        assert fast.fallbacks == [] and next(s for s in fast.stages if s.name == "encode").status == "skipped"
    assert shortcut.encoder.calls == 0 and full.encoder.calls == 3
    # a page deeper than the lexical hits that score above the dense-only ones: the dense side runs
    deep = _search(shortcut, text="red shirt", k=10)
    assert shortcut.encoder.calls == 1 and next(s for s in deep.stages if s.name == "encode").status == "ok"
    assert [i["product_id"] for i in deep.items] == [i["product_id"] for i in _search(full, text="red shirt",
                                                                                        k=10).items]


def test_a_dense_share_or_a_photo_always_runs_the_encoder(parts):
    from skulens.retrieval.ranking import RankingPolicy

    shared = SearchPipeline(**{**parts, "encoder": _CountingEncoder()},
                            ranking=RankingPolicy(fusion_weight=0.3, learned_on="test"))
    _search(shared, text="red shirt", k=2)
    assert shared.encoder.calls == 1
    assert RankingPolicy(fusion_weight=0.0).lexical_decides([], 1) is None
    assert RankingPolicy(fusion_weight=0.0).lexical_decides([("a", 3.0), ("b", 2.0), ("c", 1.0)], 2) == [
        ("a", 1.0), ("b", 0.5), ("c", 0.0)]
    assert RankingPolicy(fusion_weight=0.0).lexical_decides([("a", 3.0), ("b", 2.0), ("c", 1.0)], 3) is None
