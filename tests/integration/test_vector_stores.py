"""Every registered vector store (FAISS shards, Milvus through milvus-lite) on the same data: recall
gate, filters inside the search, exclusions; Milvus upserts and deletes, alias publish."""

from __future__ import annotations

import numpy as np
import pytest

from skulens.retrieval.filters import FilterColumns, Filters
from skulens.retrieval.stores import VECTOR_STORES, build_vector_store
from skulens.retrieval.vector_index import VectorIndexConfig

pytestmark = pytest.mark.integration


def _data(n: int = 600, dim: int = 24):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, dim))
    vectors = np.concatenate([centres[i % 3] + 0.7 * rng.normal(size=(1, dim)) for i in range(n)]).astype(np.float32)
    ids = [f"p{i}" for i in range(n)]
    keys = [f"cat{i % 3}" for i in range(n)]
    columns = FilterColumns(categories=[["Top", f"Cat{i % 3}"] for i in range(n)],
                            prices=np.array([np.nan if i % 10 == 0 else float(i) for i in range(n)]),
                            attributes=[{"colour": "red" if i % 4 == 0 else "blue"} for i in range(n)])
    return ids, vectors, keys, columns


@pytest.fixture(params=sorted(VECTOR_STORES))
def store(request, tmp_path):
    ids, vectors, keys, columns = _data()
    config = VectorIndexConfig(min_shard_size=50, gate_queries=100)
    options = {"uri": str(tmp_path / "milvus.db"), "collection": "products_v1"} if request.param == "milvus" else {}
    return build_vector_store(request.param, ids, vectors, keys, columns, config, "m/1", **options), vectors


def test_store_passes_the_gate_and_filters_inside_the_search(store):
    index, vectors = store
    assert index.manifest["recall@10"] >= 0.95
    query = vectors[4]
    plain = index.search(query, k=5)[0]
    assert plain[0][0] == "p4"
    red = index.search(query, k=10, filters=Filters.parse({"attributes": {"colour": "Red"}, "price_max": 400,
                                                           "category": "CAT1"}))[0]
    assert len(red) == 10 and all(int(p[1:]) % 4 == 0 and int(p[1:]) % 3 == 1 and int(p[1:]) <= 400 for p, _ in red)
    assert all(int(p[1:]) % 10 for p, _ in index.search(query, k=20, filters=Filters.parse({"price_min": 0}))[0])
    hits = index.search(query, k=5, exclude={"p4"})[0]
    assert "p4" not in {p for p, _ in hits} and len(hits) == 5
    assert np.allclose(index.vectors(["p4"])[0], vectors[4] / np.linalg.norm(vectors[4]), atol=1e-5)


def test_milvus_updates_in_place_and_publishes_through_an_alias(tmp_path):
    ids, vectors, keys, columns = _data(200)
    config = VectorIndexConfig(gate_queries=50)
    store = build_vector_store("milvus", ids, vectors, keys, columns, config, uri=str(tmp_path / "m.db"),
                               collection="v1")
    assert store.publish_as("shop_current") is None
    new = np.random.default_rng(9).normal(size=(1, vectors.shape[1])).astype(np.float32)
    store.upsert(["n1"], new, ["cat0"], FilterColumns([["Top"]], np.array([5.0]), [{}]))
    store.delete(["p7"])
    assert store.search(new, k=1)[0][0][0] == "n1"
    assert "p7" not in {p for p, _ in store.search(vectors[7], k=20)[0]}
    assert len(store) == 200
    again = build_vector_store("milvus", ids, vectors, keys, columns, config, uri=str(tmp_path / "m.db"),
                               collection="v2")
    assert again.publish_as("shop_current") == "v1"
    with pytest.raises(ValueError, match="already exists"):
        build_vector_store("milvus", ids, vectors, keys, columns, config, uri=str(tmp_path / "m.db"), collection="v2")
