"""Sharded FAISS index: routing, the recall gate against exact search, manifest and checksums."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skulens.retrieval.filters import FilterColumns, Filters
from skulens.retrieval.vector_index import MERGED, RecallGateError, ShardedVectorIndex, VectorIndexConfig


def _clustered(n_per: int = 400, dim: int = 32, seed: int = 0):
    """Category clusters (as product embeddings are), not i.i.d. noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, dim))
    vectors, keys = [], []
    for c, size in enumerate([n_per, n_per, n_per, n_per, 30]):  # the last category is tiny
        vectors.append(centres[c] + 0.6 * rng.normal(size=(size, dim)))
        keys += [f"cat{c}"] * size
    vectors = np.concatenate(vectors).astype(np.float32)
    return [f"p{i}" for i in range(len(vectors))], vectors, keys


def test_build_shards_route_and_pass_the_recall_gate():
    ids, vectors, keys = _clustered()
    index = ShardedVectorIndex.build(ids, vectors, keys, VectorIndexConfig(min_shard_size=100, gate_queries=200),
                                     model_version="test-v1")
    assert index.manifest["shards"] == {MERGED: 30, "cat0": 400, "cat1": 400, "cat2": 400, "cat3": 400}
    assert index.manifest["merged_categories"] == ["cat4"]
    assert index.manifest["recall@10"] >= 0.95 and index.manifest["model_version"] == "test-v1"
    hits = index.search(vectors[:1], k=5)[0]
    assert hits[0][0] == "p0" and len(hits) == 5 and hits[0][1] >= hits[-1][1]
    # A product of category 1 is found through the router.
    assert index.search(vectors[450:451], k=1)[0][0][0] == "p450"


def test_a_catalogue_smaller_than_k_can_pass_the_gate():
    """Five products: every one found is recall 1.0 (it was scored 5/10 and refused)."""
    ids, vectors, keys = _clustered()
    index = ShardedVectorIndex.build(ids[:5], vectors[:5], keys[:5], VectorIndexConfig(min_shard_size=1))
    assert index.manifest["recall@10"] == 1.0


def test_recall_gate_refuses_a_bad_build():
    ids, vectors, keys = _clustered()
    bad = VectorIndexConfig(min_shard_size=100, route_top_n=1, route_margin=0.0, m=4, ef_search=1,
                            ef_construction=8, gate_queries=200)
    with pytest.raises(RecallGateError, match=r"recall@10 against exact search is 0\.\d+ < 0.95"):
        ShardedVectorIndex.build(ids, vectors, keys, bad)


def test_save_load_and_checksums(tmp_path):
    ids, vectors, keys = _clustered(n_per=200)
    index = ShardedVectorIndex.build(ids, vectors, keys, VectorIndexConfig(min_shard_size=100, kind="hnsw_sq8",
                                                                           gate_queries=100, min_recall=0.9))
    folder = index.save(tmp_path / "v1")
    loaded = ShardedVectorIndex.load(folder)
    assert loaded.search(vectors[:3], k=5) == index.search(vectors[:3], k=5)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["vectors"] == len(ids) and all(len(v) == 64 for v in manifest["checksums"].values())
    shard = next(folder.glob("shard-*.faiss"))
    shard.write_bytes(shard.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(ValueError, match="checksum differs"):
        ShardedVectorIndex.load(folder)


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="differ"):
        ShardedVectorIndex.build(["a"], np.zeros((2, 4), np.float32), ["x", "y"])
    with pytest.raises(ValueError, match="unique"):
        ShardedVectorIndex.build(["a", "a"], np.ones((2, 4), np.float32), ["x", "x"])


def _columns(n: int) -> FilterColumns:
    """Every 7th product is red; prices 0..n-1; category = id parity."""
    return FilterColumns(categories=[["Even" if i % 2 == 0 else "Odd"] for i in range(n)],
                         prices=np.arange(n, dtype=np.float64),
                         attributes=[{"colour": "red" if i % 7 == 0 else "blue"} for i in range(n)])


def test_pq_kind_stores_short_codes_behind_the_same_gate(tmp_path):
    import faiss

    ids, vectors, keys = _clustered()
    config = VectorIndexConfig(kind="hnsw_pq", min_shard_size=100, gate_queries=100, min_recall=0.5, pq_bytes=8)
    index = ShardedVectorIndex.load(ShardedVectorIndex.build(ids, vectors, keys, config).save(tmp_path / "pq"))
    codes = {faiss.downcast_index(faiss.downcast_index(s).storage).code_size for s in index.shards.values()
             if hasattr(faiss.downcast_index(s), "hnsw")}
    assert codes == {8}  # 8 bytes per vector instead of 4 x 32
    assert 0.5 <= index.manifest["recall@10"] and index.search(vectors[0], k=3)[0]


@pytest.mark.parametrize("kind", ["hnsw", "hnsw_sq8"])
def test_filters_and_exclusions_apply_inside_the_search(tmp_path, kind):
    ids, vectors, keys = _clustered()
    config = VectorIndexConfig(min_shard_size=100, gate_queries=100, kind=kind, exact_filter_below=50)
    index = ShardedVectorIndex.build(ids, vectors, keys, config, columns=_columns(len(ids)))
    index = ShardedVectorIndex.load(index.save(tmp_path / "v"))
    query = vectors[3]
    # Selective filter (exact path) and a broad one (HNSW with a selector): k results, all passing.
    red = index.search(query, k=10, filters=Filters.parse({"attributes": {"Colour": "RED"}, "price_max": 300}))[0]
    assert len(red) == 10 and all(int(pid[1:]) % 7 == 0 and int(pid[1:]) <= 300 for pid, _ in red)
    odd = index.search(query, k=10, filters=Filters.parse({"category": "odd"}))[0]
    assert len(odd) == 10 and all(int(pid[1:]) % 2 == 1 for pid, _ in odd)
    # The filtered result equals exact search over the passing rows (nothing lost to truncation).
    mask = np.array([int(p[1:]) % 7 == 0 and int(p[1:]) <= 300 for p in ids])
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = [ids[i] for i in np.argsort(-np.where(mask, normed @ (query / np.linalg.norm(query)), -9))[:10]]
    got = [pid for pid, _ in red]
    assert got == exact if kind == "hnsw" else len(set(got) & set(exact)) >= 9  # SQ8: decoded vectors
    top = [pid for pid, _ in index.search(query, k=5)[0]]
    hits = index.search(query, k=5, exclude=set(top[:2]))[0]
    assert not {pid for pid, _ in hits} & set(top[:2]) and len(hits) == 5
    assert index.search(query, k=5, filters=Filters.parse({"category": "nowhere"}))[0] == []
    assert np.allclose(index.vectors(["p3"])[0], normed[3], atol=0.02)


def test_filtering_an_index_without_columns_is_a_clear_error():
    ids, vectors, keys = _clustered()
    index = ShardedVectorIndex.build(ids, vectors, keys, VectorIndexConfig(min_shard_size=100, gate_queries=50))
    with pytest.raises(ValueError, match="built without filter columns"):
        index.search(vectors[0], filters=Filters.parse({"category": "x"}))


def test_index_is_chosen_to_a_memory_budget_and_ef_tuned_to_the_recall_target():
    from skulens.retrieval.vector_index import choose_kind, estimate_mb

    ids, vectors, keys = _clustered()
    n, dim = len(ids), vectors.shape[1]
    roomy = VectorIndexConfig(kind="auto", memory_budget_mb=estimate_mb("hnsw", n, dim, 32) + 1)
    tight = VectorIndexConfig(kind="auto", memory_budget_mb=estimate_mb("hnsw_sq8", n, dim, 32) + 0.01)
    assert choose_kind(roomy, n, dim) == "hnsw" and choose_kind(tight, n, dim) == "hnsw_sq8"
    assert choose_kind(VectorIndexConfig(kind="auto", memory_budget_mb=estimate_mb("hnsw_pq", n, dim, 32) + 0.01),
                       n, dim) == "hnsw_pq"
    with pytest.raises(ValueError, match="even with PQ"):
        choose_kind(VectorIndexConfig(kind="auto", memory_budget_mb=0.01), n, dim)
    with pytest.raises(ValueError, match="over the memory budget"):
        choose_kind(VectorIndexConfig(kind="hnsw", memory_budget_mb=0.01), n, dim)
    config = VectorIndexConfig(min_shard_size=100, gate_queries=200, ef_search=1, m=4, ef_construction=8,
                               tune_ef=True, min_recall=0.9, latency_budget_ms=1000)
    index = ShardedVectorIndex.build(ids, vectors, keys, config)
    assert index.manifest["recall@10"] >= 0.9 and index.config.ef_search > 1
    assert index.manifest["config"]["ef_search"] == index.config.ef_search
    assert index.manifest["within_latency_budget"] is True and index.manifest["latency_p50_ms"] > 0


@pytest.mark.parametrize("kind", ["hnsw", "hnsw_sq8", "hnsw_pq", "flat"])
def test_a_batch_of_queries_finds_what_each_query_finds_alone_from_a_memory_mapped_index(tmp_path, kind):
    ids, vectors, keys = _clustered(n_per=300)
    columns = FilterColumns(categories=[[key] for key in keys], prices=np.full(len(ids), np.nan),
                            attributes=[{} for _ in ids])
    index = ShardedVectorIndex.build(ids, vectors, keys, VectorIndexConfig(min_shard_size=100, kind=kind,
                                                                           gate_queries=100, min_recall=0.5),
                                     columns=columns)
    mapped = ShardedVectorIndex.load(index.save(tmp_path / kind), mmap=True)
    probes = vectors[::97] + 0.05
    for filters in (None, Filters.parse({"category": "cat1"})):
        batched = mapped.search(probes, k=7, filters=filters, exclude={"p0"})
        alone = [index.search(q, k=7, filters=filters, exclude={"p0"})[0] for q in probes]
        assert [[pid for pid, _ in hits] for hits in batched] == [[pid for pid, _ in hits] for hits in alone]
        assert all(len(hits) == 7 for hits in batched)
