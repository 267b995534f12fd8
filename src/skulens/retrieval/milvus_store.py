"""Milvus as the vector store (pymilvus), for catalogues beyond one machine.

The same interface as :class:`~skulens.retrieval.vector_index.ShardedVectorIndex` (``search`` with
filters and exclusions, ``vectors``), plus native ``upsert`` / ``delete``. One collection per index
build (HNSW, inner product on normalised vectors); filters become a Milvus boolean expression
evaluated inside the search; the top category is a partition key, so Milvus prunes partitions the
way the FAISS router picks shards. Publishing points a collection **alias** at the new build
(atomic), so rollback is moving the alias back.

``uri`` is a Milvus server (``http://milvus:19530``) or, for tests and laptops, a local
``*.db`` file served by milvus-lite (the same engine, embedded).
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from skulens.retrieval.filters import FilterColumns, Filters
from skulens.vectors import normalise

Hits = list[tuple[str, float]]
_MAX_STR = 512


def _quote(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Milvus string literal


def filter_expression(filters: Filters | None, exclude: Collection[str] = ()) -> str:
    """The Milvus boolean expression of ``filters`` and excluded ids ('' when nothing is filtered)."""
    parts = []
    if filters is not None and not filters.empty:
        if filters.category is not None:
            parts.append(f"ARRAY_CONTAINS(categories, {_quote(filters.category.casefold())})")
        if filters.price_min is not None:
            parts.append(f"price >= {float(filters.price_min)}")
        if filters.price_max is not None:
            parts.append(f"price <= {float(filters.price_max)}")
        for name, value in filters.attributes.items():
            parts.append(f"ARRAY_CONTAINS(attrs, {_quote(f'{name.casefold()}={value.casefold()}')})")
    if exclude:
        parts.append(f"id not in [{', '.join(_quote(p) for p in sorted(exclude))}]")
    return " and ".join(parts)


class MilvusVectorStore:
    """A Milvus collection (or alias) of product vectors with their filter fields."""

    def __init__(self, client: Any, collection: str, ef_search: int = 64) -> None:
        self.client, self.collection, self.ef_search = client, collection, ef_search
        self.manifest: dict[str, Any] = {}

    @staticmethod
    def connect(uri: str, token: str | None = None, *, attempts: int = 3) -> Any:
        """A client for ``uri``; retries on a fresh connection when the shared one is refused."""
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        options: dict[str, Any] = {}
        if uri.endswith(".db"):
            # milvus-lite's gRPC server answers pymilvus's 10 s idle keepalive pings with
            # GOAWAY "too many pings", which later fails a reconnect; ping only during calls.
            options["grpc_options"] = {"grpc.keepalive_time_ms": 120_000,
                                       "grpc.keepalive_permit_without_calls": False}
        for attempt in range(attempts - 1):
            try:
                return MilvusClient(uri, token=token or "", dedicated=attempt > 0, **options)
            except MilvusException:
                time.sleep(1.0 + attempt)
        return MilvusClient(uri, token=token or "", dedicated=attempts > 1, **options)

    @classmethod
    def build(cls, client: Any, collection: str, ids: Sequence[str], vectors: np.ndarray,
              shard_keys: Sequence[str | None], columns: FilterColumns, *, m: int = 32, ef_construction: int = 80,
              ef_search: int = 64, batch: int = 2000, model_version: str = "unknown") -> MilvusVectorStore:
        """Create ``collection`` (it must not exist) and insert every vector."""
        from pymilvus import DataType

        if client.has_collection(collection):
            raise ValueError(f"Milvus collection {collection!r} already exists; builds never overwrite one")
        started = time.perf_counter()
        vectors = normalise(np.asarray(vectors, dtype=np.float32))
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=_MAX_STR)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(vectors.shape[1]))
        schema.add_field("shard", DataType.VARCHAR, max_length=_MAX_STR, is_partition_key=True)
        schema.add_field("categories", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=32,
                         max_length=_MAX_STR)
        schema.add_field("attrs", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=128,
                         max_length=_MAX_STR)
        schema.add_field("price", DataType.DOUBLE, nullable=True)
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type="HNSW", metric_type="IP",
                         params={"M": m, "efConstruction": ef_construction})
        client.create_collection(collection, schema=schema, index_params=params)
        store = cls(client, collection, ef_search)
        store.upsert(ids, vectors, shard_keys, columns, batch=batch, insert=True)
        client.load_collection(collection)
        store.manifest = {"kind": "milvus", "collection": collection, "vectors": len(ids),
                          "dim": int(vectors.shape[1]), "model_version": model_version,
                          "config": {"m": m, "ef_construction": ef_construction, "ef_search": ef_search},
                          "build_s": round(time.perf_counter() - started, 2)}
        return store

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, shard_keys: Sequence[str | None],
               columns: FilterColumns, *, batch: int = 2000, insert: bool = False) -> int:
        """Insert or replace rows (``insert=True`` for a fresh collection: faster, no replace)."""
        vectors = normalise(np.asarray(vectors, dtype=np.float32))
        write = self.client.insert if insert else self.client.upsert
        for start in range(0, len(ids), batch):
            rows = []
            for i in range(start, min(start + batch, len(ids))):
                price = columns.prices[i]
                attrs = [f"{k.casefold()}={v.casefold()}" for k, v in columns.attributes[i].items()]
                rows.append({"id": ids[i], "vector": vectors[i].tolist(), "shard": shard_keys[i] or "_merged",
                             "categories": [c.casefold() for c in columns.categories[i]][:32], "attrs": attrs[:128],
                             "price": None if np.isnan(price) else float(price)})
            write(self.collection, rows)
        return len(ids)

    def delete(self, ids: Collection[str]) -> None:
        self.client.delete(self.collection, ids=list(ids))

    def search(self, queries: np.ndarray, k: int = 10, shards: Sequence[str] | None = None,
               filters: Filters | None = None, exclude: Collection[str] = ()) -> list[Hits]:
        """Top-``k`` (id, score) per query, filtered inside Milvus."""
        queries = normalise(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        expression = filter_expression(filters, exclude)
        if shards:
            shard_clause = f"shard in [{', '.join(_quote(s) for s in shards)}]"
            expression = f"{expression} and {shard_clause}" if expression else shard_clause
        result = self.client.search(self.collection, data=queries.tolist(), limit=k, filter=expression,
                                    output_fields=["id"], search_params={"params": {"ef": max(self.ef_search, k)}})
        return [[(hit["id"], float(hit["distance"])) for hit in hits] for hits in result]

    def vectors(self, product_ids: Sequence[str]) -> np.ndarray:
        if not product_ids:
            return np.zeros((0, 0), np.float32)
        rows = {r["id"]: r["vector"] for r in self.client.get(self.collection, ids=list(product_ids),
                                                               output_fields=["vector"])}
        missing = [p for p in product_ids if p not in rows]
        if missing:
            raise KeyError(f"{len(missing)} ids are not in Milvus collection {self.collection}, e.g. {missing[0]!r}")
        return np.asarray([rows[p] for p in product_ids], dtype=np.float32)

    def __len__(self) -> int:
        return int(self.client.get_collection_stats(self.collection)["row_count"])

    def publish_as(self, alias: str) -> str | None:
        """Point ``alias`` at this collection (atomic); return the collection it pointed at before."""
        previous = None
        try:
            previous = self.client.describe_alias(alias).get("collection_name")
        except Exception:  # noqa: BLE001 - pymilvus raises a generic error for an unknown alias
            previous = None
        if previous is None:
            self.client.create_alias(self.collection, alias)
        else:
            self.client.alter_alias(self.collection, alias)
        return previous
