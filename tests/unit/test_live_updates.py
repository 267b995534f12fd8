"""Live upserts and deletes over a published index: visible at once, never undone by compaction,
reload or rollback."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skulens.data.contracts import PRODUCTS
from skulens.pipelines.build_index import index_store, rollback
from skulens.retrieval.filters import FilterColumns, Filters
from skulens.retrieval.lexical import BM25Index
from skulens.retrieval.live import LiveIndex, UpdateLog, compact
from skulens.retrieval.ranking import RankingPolicy
from skulens.retrieval.vector_index import ShardedVectorIndex, VectorIndexConfig

DIM = 16


def _products(rows) -> pa.Table:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return pa.Table.from_pylist([
        {"product_id": pid, "title": title, "description": None, "brand": None, "category_path": [cat],
         "attributes": [("colour", colour)], "price": price, "currency": "USD", "image_uri": None, "updated_at": now}
        for pid, title, cat, colour, price in rows], schema=PRODUCTS)


def _vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def published(settings):
    """A published version of 60 products, as build_index leaves it."""
    rows = [(f"p{i}", f"{'red' if i % 2 else 'blue'} shirt number {i}", "Shirts" if i < 30 else "Shoes",
             "red" if i % 2 else "blue", float(i)) for i in range(60)]
    products = _products(rows)
    ids = [r[0] for r in rows]
    vectors = np.stack([_vec(i) for i in range(60)])
    keys = [r[2] for r in rows]
    store = index_store(settings, "shop")
    staging = store.begin("v1")
    pq.write_table(products, staging / "products.parquet")
    pq.write_table(pa.table({"product_id": ids, "shard_key": keys, "fused_vec": pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.reshape(-1)), DIM)}), staging / "embeddings.parquet")
    config = VectorIndexConfig(min_shard_size=10, gate_queries=20, m=8)
    ShardedVectorIndex.build(ids, vectors, keys, config, model_version="m/1",
                             columns=FilterColumns.from_products(products)).save(staging / "vector")
    BM25Index.build(products, folder=staging / "lexical")
    RankingPolicy(fusion_weight=0.3, rerank_depth=10, rerank_blend=0.5, learned_on="toy queries").save(staging)
    (staging / "manifest.json").write_text(json.dumps({"version": "v1", "previous": None, "updates_through": 0}))
    store.commit("v1")
    return store


def test_upserts_and_deletes_are_searchable_at_once_and_survive_compaction_and_reload(settings, published):
    live = LiveIndex.open(published.root)
    assert live.search(_vec(5), k=1)[0][0][0] == "p5"
    live.delete(["p5"])
    live.upsert(_products([("n1", "green silk scarf", "Scarves", "green", 12.0)]), _vec(1000)[None, :])
    live.upsert(_products([("p7", "yellow raincoat", "Coats", "yellow", 70.0)]), _vec(2000)[None, :])  # changed

    def check(index: LiveIndex) -> None:
        assert "p5" not in {pid for pid, _ in index.search(_vec(5), k=60)[0]}
        assert "p5" not in {pid for pid, _ in index.search_text("shirt number 5", k=60)}
        assert index.search(_vec(1000), k=1)[0][0][0] == "n1"
        assert index.search_text("silk scarf", k=1)[0][0] == "n1"
        assert index.search(_vec(7), k=1)[0][0][0] != "p7"  # the old vector of p7 is gone
        assert index.search(_vec(2000), k=1)[0][0][0] == "p7"
        assert index.search_text("raincoat", k=1)[0][0] == "p7" and not index.search_text("number 7", k=60,
                                                                                            only={"p7"})
        assert [p for p, _ in index.search(_vec(1000), k=3, filters=Filters.parse({"category": "scarves"}))[0]] \
            == ["n1"]

    check(live)
    check(LiveIndex.open(published.root))  # another process (or a restart) replays the log

    summary = compact(settings, "shop", run_id="v2")
    assert summary["compacted"] and summary["products"] == 60 and summary["upserted"] == 2
    assert summary["log_entries_pruned"] == 0  # v1 (kept for rollback) has not folded the log in
    reloaded = LiveIndex.open(published.root)
    assert reloaded.version.name == "v2" and not reloaded.tombstones and not reloaded.delta.rows
    carried = RankingPolicy.load(reloaded.version)  # the learned ranking travels with the compacted version
    assert (carried.fusion_weight, carried.rerank_depth, carried.rerank_blend) == (0.3, 10, 0.5)
    assert carried.learned_on == "toy queries (carried over by compaction from v1)"
    check(reloaded)
    assert compact(settings, "shop")["compacted"] is False  # nothing new to fold

    rollback(settings, "shop", "v1")  # the old version replays the whole log: p5 stays deleted
    check(LiveIndex.open(published.root))


def test_update_log_refuses_bad_batches(tmp_path):
    log = UpdateLog(tmp_path / "updates")
    with pytest.raises(ValueError, match="lack column"):
        log.upsert(pa.table({"product_id": ["a"]}), np.ones((1, 4)), [None])
    with pytest.raises(ValueError, match="1 products but 2 vectors"):
        log.upsert(_products([("a", "t", "c", "red", 1.0)]), np.ones((2, 4)), [None])
    with pytest.raises(ValueError, match="nothing to delete"):
        log.delete([])
    assert log.entries() == []
