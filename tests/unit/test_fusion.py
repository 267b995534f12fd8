"""Rank fusion, the learned fusion weight, near-duplicate collapse and the hybrid retriever."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from skulens.evaluation.ranking import learn_weight
from skulens.retrieval.filters import FilterColumns, Filters
from skulens.retrieval.fusion import collapse_near_duplicates, rrf, weighted
from skulens.retrieval.retrievers import RETRIEVERS, RerankedRetriever, SearchQuery, make_retriever
from skulens.retrieval.vector_index import ShardedVectorIndex, VectorIndexConfig


def test_rrf_rewards_agreement_and_weighted_uses_normalised_scores():
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.1)]
    lexical = [("b", 12.0), ("d", 11.0), ("a", 1.0)]
    assert [pid for pid, _ in rrf([dense, lexical])][:2] == ["b", "a"]
    assert [pid for pid, _ in weighted(dense, lexical, 1.0)][0] == "a"
    assert [pid for pid, _ in weighted(dense, lexical, 0.0)][:2] == ["b", "d"]
    scores = dict(weighted(dense, lexical, 0.5))
    assert scores["b"] == pytest.approx(0.5 * (0.7 / 0.8) + 0.5 * 1.0)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        weighted(dense, lexical, 1.5)


def test_learned_weight_follows_the_better_list():
    qrels = {f"q{i}": {f"good{i}": 3} for i in range(20)}
    dense = {q: [(f"good{i}", 0.9), ("x", 0.5)] for i, q in enumerate(qrels)}
    lexical = {q: [("y", 9.0), ("z", 8.0), (f"good{i}", 1.0)] for i, q in enumerate(qrels)}
    weight, tried = learn_weight(dense, lexical, qrels)
    assert weight >= 0.5 and tried[weight] == max(tried.values()) and tried[0.0] < tried[weight]
    with pytest.raises(ValueError, match="no training query"):
        learn_weight({}, {}, {"q": {"a": 1}})


def test_near_duplicates_collapse_to_the_best():
    vecs = {"a": [1, 0, 0], "a2": [1, 0.001, 0], "b": [0, 1, 0], "c": [0.7, 0.7, 0]}
    hits = [("a", 1.0), ("a2", 0.99), ("b", 0.5), ("c", 0.4)]
    kept = collapse_near_duplicates(hits, lambda ids: np.array([vecs[i] for i in ids], float), 0.995)
    assert [pid for pid, _ in kept] == ["a", "b", "c"]


class WordHashEncoder:
    """A deterministic bag-of-words vectoriser: test data for the fusion logic, not a model."""

    name = "word-hash"

    def encode_texts(self, texts):
        out = np.zeros((len(texts), 512), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, zlib.crc32(word.encode()) % 512] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    def encode_images(self, sources):
        return self.encode_texts([str(s) for s in sources])


class Words:
    """A lexical index over titles with the BM25Index search signature (exact word overlap)."""

    def __init__(self, titles, columns):
        self.titles, self.columns = titles, columns

    def search(self, query, k=10, filters=None, exclude=(), only=None):
        mask = self.columns.mask(filters) if filters else None
        words = set(query.lower().split())
        hits = [(pid, float(len(words & set(t.lower().split())))) for i, (pid, t) in enumerate(self.titles.items())
                if (mask is None or mask[i]) and pid not in exclude]
        return sorted([h for h in hits if h[1] > 0], key=lambda h: -h[1])[:k]


@pytest.fixture
def components():
    titles = {f"p{i}": f"{colour} {kind} {i}" for i, (colour, kind) in enumerate(
        (c, k) for c in ("red", "blue", "green", "black") for k in ("shirt", "dress", "shoe", "bag", "hat"))}
    ids = list(titles)
    columns = FilterColumns(categories=[[t.split()[1]] for t in titles.values()],
                            prices=np.arange(len(ids), dtype=float), attributes=[{} for _ in ids])
    encoder = WordHashEncoder()
    store = ShardedVectorIndex.build(ids, encoder.encode_texts(list(titles.values())), [None] * len(ids),
                                     VectorIndexConfig(kind="flat", min_shard_size=1, gate_queries=10), columns=columns)
    return {"store": store, "encoder": encoder, "lexical": Words(titles, columns)}, titles


@pytest.mark.parametrize("name", sorted(RETRIEVERS))
def test_every_retriever_applies_filters_and_exclusions(components, name):
    parts, _ = components
    retriever = make_retriever(name, **parts)
    query = SearchQuery(text="red shirt", filters=Filters.parse({"category": "shirt", "price_max": 12}))
    hits = retriever.search(query, k=5, exclude={"p0"})
    assert hits and all(pid != "p0" and int(pid[1:]) % 5 == 0 and int(pid[1:]) <= 12 for pid, _ in hits)
    assert retriever.search_batch([SearchQuery(text="blue hat")], k=3)[0][0][0] == "p9"


def test_photo_queries_go_to_the_dense_side_and_bad_queries_are_refused(components):
    parts, _ = components
    hybrid = make_retriever("hybrid_rrf", **parts)
    assert hybrid.search(SearchQuery(image="green bag"), k=1)[0][0] == "p13"
    assert make_retriever("bm25", **parts).search(SearchQuery(image="green bag")) == []
    both = make_retriever("dense", **parts).search(SearchQuery(text="green", image="bag", image_weight=0.5), k=1)
    assert both[0][0] == "p13"
    with pytest.raises(ValueError, match="text, a photo or both"):
        SearchQuery(text="  ")
    with pytest.raises(ValueError, match="unknown retriever"):
        make_retriever("nope", **parts)


def test_reranker_reorders_the_head_and_blend_mixes_in_the_base(components):
    parts, titles = components
    base = make_retriever("hybrid_weighted", **parts, weight=0.5)

    def prefers_hats(query, cands):
        return np.array([1.0 if "hat" in t else 0.0 for t in cands])

    hits = RerankedRetriever(base, prefers_hats, titles, depth=20).search(SearchQuery(text="red shirt"), k=3)
    assert "hat" in titles[hits[0][0]]
    kept = RerankedRetriever(base, prefers_hats, titles, depth=20, blend=0.0).search(SearchQuery(text="red shirt"), k=1)
    assert kept[0][0] == base.search(SearchQuery(text="red shirt"), k=1)[0][0]
