"""Vector stores by name: ``faiss`` (embedded default, category-sharded HNSW files) and ``milvus``
(pymilvus: a Milvus server, or milvus-lite for a local file). Both build with the same arguments,
pass the same recall gate and serve the same ``search(queries, k, filters=, exclude=)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from skulens.retrieval.filters import FilterColumns
from skulens.retrieval.vector_index import RecallGateError, ShardedVectorIndex, VectorIndexConfig, recall_against_exact


def build_faiss(ids: Sequence[str], vectors: np.ndarray, shard_keys: Sequence[str | None], columns: FilterColumns,
                config: VectorIndexConfig, model_version: str = "unknown", **_: Any) -> ShardedVectorIndex:
    return ShardedVectorIndex.build(ids, vectors, shard_keys, config, model_version=model_version, columns=columns)


def build_milvus(ids: Sequence[str], vectors: np.ndarray, shard_keys: Sequence[str | None], columns: FilterColumns,
                 config: VectorIndexConfig, model_version: str = "unknown", *, uri: str, collection: str,
                 token: str | None = None, **_: Any) -> Any:
    from skulens.retrieval.milvus_store import MilvusVectorStore

    client = MilvusVectorStore.connect(uri, token)
    store = MilvusVectorStore.build(client, collection, ids, vectors, shard_keys, columns, m=config.m,
                                    ef_construction=config.ef_construction, ef_search=config.ef_search,
                                    model_version=model_version)
    recall = recall_against_exact(store.search, vectors, ids, 10, config.gate_queries, config.seed)
    store.manifest["recall@10"] = recall
    if recall < config.min_recall:
        client.drop_collection(collection)
        raise RecallGateError(f"Milvus collection {collection}: recall@10 against exact search is {recall:.4f} < "
                              f"{config.min_recall}")
    return store


VECTOR_STORES: dict[str, Callable[..., Any]] = {"faiss": build_faiss, "milvus": build_milvus}


def build_vector_store(kind: str, *args: Any, **kwargs: Any) -> Any:
    """Build the vector store registered as ``kind``."""
    if kind not in VECTOR_STORES:
        raise ValueError(f"unknown vector store {kind!r}; registered: {', '.join(sorted(VECTOR_STORES))}")
    return VECTOR_STORES[kind](*args, **kwargs)


def open_vector_store(folder: Any, token: str | None = None) -> Any:
    """The vector store of an index version's ``vector/`` folder: FAISS files, or the Milvus
    collection its manifest names."""
    import json
    from pathlib import Path

    manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("kind") == "milvus":
        from skulens.retrieval.milvus_store import MilvusVectorStore

        return MilvusVectorStore(MilvusVectorStore.connect(manifest["uri"], token), manifest["collection"])
    return ShardedVectorIndex.load(Path(folder))
