"""Live updates: upserts and deletes searchable at once, without rebuilding the index.

A published index version is immutable. Changes after it go to an append-only **update log**
(``SKULENS_HOME/indexes/<catalog>/updates/<seq>.parquet``, one file per batch, written atomically)
and a :class:`LiveIndex` serves *version + log*:

* **tombstones**: every id deleted or upserted after the version; they are excluded *inside* the
  base searches (FAISS selector, tantivy prohibited clause), so a deleted product can never
  reappear and an updated one never shows its old vector or title;
* **delta**: the latest upserted rows, searched exactly (vectors) and scored by BM25 with the base
  index's statistics (lexical: the same formula, document frequencies and field lengths, so a new
  product ranks as it will after compaction), merged with the base results by score.

:func:`compact` folds the log into a new version (recall gate, atomic publish, ``updates_through``
in its manifest), so a reload replays only newer entries; a rollback to an older version replays
more of the log, so deletes stay deleted whatever version serves. Each version keeps a
``products.parquet`` snapshot and its ``embeddings.parquet`` for that purpose.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from skulens.retrieval.filters import FilterColumns, Filters
from skulens.vectors import normalise

Hits = list[tuple[str, float]]
_PRODUCT_COLUMNS = ("product_id", "title", "category_path", "attributes", "price", "image_uri")


class UpdateLog:
    """Append-only, numbered batches of upserts (with vectors) and deletes."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def entries(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.stem) for p in self.folder.glob("*.parquet") if p.stem.isdigit())

    def last(self) -> int:
        entries = self.entries()
        return entries[-1] if entries else 0

    def _write(self, table: pa.Table) -> int:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp)
        while True:  # several writers: the first to claim a number wins, the others take the next
            seq = self.last() + 1
            try:
                os.link(tmp, self.folder / f"{seq:012d}.parquet")
                tmp.unlink()
                return seq
            except FileExistsError:
                continue

    def upsert(self, products: pa.Table, vectors: np.ndarray, shard_keys: Sequence[str | None]) -> int:
        """Log new or changed products with their vectors; returns the entry's number."""
        missing = [c for c in _PRODUCT_COLUMNS if c not in products.column_names]
        if missing:
            raise ValueError(f"upserted products lack column(s) {', '.join(missing)}")
        if len(vectors) != products.num_rows or len(shard_keys) != products.num_rows:
            raise ValueError(f"{products.num_rows} products but {len(vectors)} vectors and "
                             f"{len(shard_keys)} shard keys")
        ids = products.column("product_id").to_pylist()
        if any(not pid for pid in ids) or len(set(ids)) != len(ids):
            raise ValueError("upserted product ids must be set and unique within a batch")
        vectors = normalise(np.asarray(vectors, dtype=np.float32))
        table = products.select(list(_PRODUCT_COLUMNS)).append_column("op", pa.array(["upsert"] * len(ids))) \
            .append_column("shard_key", pa.array(list(shard_keys), pa.string())) \
            .append_column("vector", pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]))
        return self._write(table)

    def delete(self, product_ids: Collection[str]) -> int:
        """Log deletions; returns the entry's number."""
        if not product_ids:
            raise ValueError("nothing to delete")
        return self._write(pa.table({"product_id": pa.array(sorted(product_ids), pa.string()),
                                     "op": pa.array(["delete"] * len(product_ids))}))

    def read(self, after: int) -> list[tuple[int, pa.Table]]:
        """Entries numbered above ``after``, in order."""
        return [(seq, pq.read_table(self.folder / f"{seq:012d}.parquet")) for seq in self.entries() if seq > after]

    def prune(self, through: int) -> int:
        """Remove entries numbered ``through`` or below (folded into every kept version)."""
        removed = 0
        for seq in self.entries():
            if seq <= through:
                (self.folder / f"{seq:012d}.parquet").unlink()
                removed += 1
        return removed


class _Delta:
    """The live rows: latest upsert per id, searched exactly. The products table, filter columns
    and lexical documents of the rows are derived once per change, not per query."""

    _SCHEMA = pa.schema([("product_id", pa.string()), ("title", pa.string()),
                         ("category_path", pa.list_(pa.string())), ("attributes", pa.map_(pa.string(), pa.string())),
                         ("price", pa.float64()), ("image_uri", pa.string())])

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.vectors: dict[str, np.ndarray] = {}
        self._derived: tuple[pa.Table, FilterColumns, list[dict[str, Any]]] | None = None

    def apply(self, table: pa.Table) -> set[str]:
        ids = table.column("product_id").to_pylist()
        if table.column("op")[0].as_py() == "delete":
            for pid in ids:
                self.rows.pop(pid, None)
                self.vectors.pop(pid, None)
        else:
            vecs = np.asarray(table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                              dtype=np.float32).reshape(len(ids), -1)
            for row, vec in zip(table.drop_columns(["vector"]).to_pylist(), vecs, strict=True):
                self.rows[row["product_id"]], self.vectors[row["product_id"]] = row, vec
        self._derived = None
        return set(ids)

    def _derive(self) -> tuple[pa.Table, FilterColumns, list[dict[str, Any]]]:
        if self._derived is None:
            from skulens.retrieval.lexical import product_documents

            products = pa.Table.from_pylist([{c: r[c] for c in _PRODUCT_COLUMNS} for r in self.rows.values()],
                                            schema=self._SCHEMA)
            self._derived = (products, FilterColumns.from_products(products), list(product_documents(products)))
        return self._derived

    def products(self) -> pa.Table:
        return self._derive()[0]

    def _candidates(self, filters: Filters | None, exclude: Collection[str],
                    only: Collection[str] | None = None) -> list[int]:
        """Positions (in ``rows`` order) of the live rows that pass ``filters`` and the id sets."""
        _, columns, _ = self._derive()
        mask = columns.mask(filters) if filters is not None else None
        return [i for i, pid in enumerate(self.rows) if (mask is None or mask[i]) and pid not in exclude
                and (only is None or pid in only)]

    def search_vectors(self, query: np.ndarray, k: int, filters: Filters | None, exclude: Collection[str]) -> Hits:
        ids = list(self.rows)
        chosen = [ids[i] for i in self._candidates(filters, exclude)]
        if not chosen:
            return []
        scores = np.stack([self.vectors[pid] for pid in chosen]) @ query
        top = np.argsort(-scores, kind="stable")[:k]
        return [(chosen[i], float(scores[i])) for i in top]

    def search_text(self, text: str, k: int, filters: Filters | None, exclude: Collection[str],
                    only: Collection[str] | None, base: Any) -> Hits:
        """BM25 of the live rows with the base index's statistics (:meth:`BM25Index.score_external`),
        so a new product ranks as it will after compaction."""
        documents = self._derive()[2]
        docs = [documents[i] for i in self._candidates(filters, exclude, only)]
        if not docs:
            return []
        scores = base.score_external(text, docs)
        hits = sorted(((d["id"], s) for d, s in zip(docs, scores, strict=True) if s > 0), key=lambda h: -h[1])
        return hits[:k]


class LiveIndex:
    """A published version plus the update log after it; a vector store and a lexical index."""

    def __init__(self, root: Path, version: Path, vector: Any, lexical: Any) -> None:
        self.root, self.version = Path(root), Path(version)
        self.vector, self.base_lexical = vector, lexical
        self.log = UpdateLog(self.root / "updates")
        manifest = self.version / "manifest.json"
        self.manifest = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
        self.applied = int(self.manifest.get("updates_through", 0))
        self.tombstones: set[str] = set()
        self.delta = _Delta()
        self.refresh()

    @classmethod
    def open(cls, root: Path | Any, version: str | None = None) -> LiveIndex:
        """The current version (or ``version``) under ``root`` (``indexes/<catalog>``, or its
        VersionedDir with an object-store mirror) with the log replayed."""
        from skulens.retrieval.lexical import BM25Index
        from skulens.retrieval.vector_index import ShardedVectorIndex
        from skulens.storage import VersionedDir

        store = root if isinstance(root, VersionedDir) else VersionedDir(Path(root))
        root = store.root
        if version is not None:
            if version not in store.list_versions():
                raise FileNotFoundError(f"no index version {version!r} under {root}; "
                                        f"published: {', '.join(store.list_versions()) or 'none'}")
            current = store.local(version)
        else:
            current = store.current()
        if current is None:
            raise FileNotFoundError(f"no published index under {root}; run the build_index pipeline first")
        info = json.loads((current / "vector" / "manifest.json").read_text(encoding="utf-8"))
        if info.get("kind") == "milvus":
            raise ValueError(f"{current.name} is served by Milvus, which takes upserts and deletes itself "
                             "(MilvusVectorStore.upsert / delete); the update log is for FAISS versions")
        return cls(root, current, ShardedVectorIndex.load(current / "vector"), BM25Index.load(current / "lexical"))

    # -- changes -------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Apply log entries written since the last refresh (by this or another process)."""
        applied = 0
        for seq, table in self.log.read(self.applied):
            changed = self.delta.apply(table)
            self.tombstones |= {pid for pid in changed if pid in self.vector}
            self.applied, applied = seq, applied + 1
        return applied

    def upsert(self, products: pa.Table, vectors: np.ndarray, shard_keys: Sequence[str | None] | None = None) -> int:
        """Add or replace products (searchable on return)."""
        if shard_keys is None:
            paths = products.column("category_path").to_pylist()
            shard_keys = [p[0] if p else None for p in paths]
        if vectors.shape[1] != self.vector.manifest.get("dim", vectors.shape[1]):
            raise ValueError(f"vectors have {vectors.shape[1]} dimensions; the index has {self.vector.manifest['dim']}")
        seq = self.log.upsert(products, vectors, shard_keys)
        self.refresh()
        return seq

    def delete(self, product_ids: Collection[str]) -> int:
        """Delete products (gone from results on return)."""
        seq = self.log.delete(product_ids)
        self.refresh()
        return seq

    # -- search (the VectorStore and lexical interfaces) -------------------------------------
    def search(self, queries: np.ndarray, k: int = 10, shards: Sequence[str] | None = None,
               filters: Filters | None = None, exclude: Collection[str] = ()) -> list[Hits]:
        queries = normalise(np.atleast_2d(queries))
        hidden = self.tombstones | set(exclude)
        base = self.vector.search(queries, k=k, shards=shards, filters=filters, exclude=hidden)
        return [sorted(b + self.delta.search_vectors(q, k, filters, exclude), key=lambda h: -h[1])[:k]
                for q, b in zip(queries, base, strict=True)]

    def vectors(self, product_ids: Sequence[str]) -> np.ndarray:
        return np.stack([self.delta.vectors[p] if p in self.delta.vectors else self.vector.vectors([p])[0]
                         for p in product_ids]) if product_ids else np.zeros((0, 0), np.float32)

    def search_text(self, query: str, k: int = 10, filters: Filters | None = None, exclude: Collection[str] = (),
                    only: Collection[str] | None = None) -> Hits:
        base = self.base_lexical.search(query, k=k, filters=filters, exclude=self.tombstones | set(exclude), only=only)
        delta = self.delta.search_text(query, k, filters, exclude, only, self.base_lexical)
        return sorted(base + delta, key=lambda h: -h[1])[:k]

    @property
    def lexical(self) -> _LexicalView:
        """This index as a lexical index (``search(text, k, filters, exclude, only)``)."""
        return _LexicalView(self)


class _LexicalView:
    def __init__(self, live: LiveIndex) -> None:
        self.live = live

    def search(self, query: str, k: int = 10, filters: Filters | None = None, exclude: Collection[str] = (),
               only: Collection[str] | None = None) -> Hits:
        return self.live.search_text(query, k, filters, exclude, only)


def compact(settings: Any, catalog: str, run_id: str | None = None) -> dict[str, Any]:
    """Fold the update log into a new published version (recall gate, atomic swap); return its summary."""
    from skulens.retrieval.embed import read_embeddings
    from skulens.retrieval.lexical import BM25Index, LexicalConfig
    from skulens.retrieval.vector_index import ShardedVectorIndex, VectorIndexConfig
    from skulens.storage import new_version_id
    from skulens.storage.layout import index_store

    started = time.perf_counter()
    store = index_store(settings, catalog)
    live = LiveIndex.open(store)
    through = live.applied
    if through == int(live.manifest.get("updates_through", 0)):
        return {"compacted": False, "version": store.current_id(), "reason": "no updates since the current version"}
    base_products = pq.read_table(live.version / "products.parquet")
    ids, vectors, keys = read_embeddings(live.version / "embeddings.parquet")
    keep = [i for i, pid in enumerate(ids) if pid not in live.tombstones]
    delta_ids = list(live.delta.rows)
    new_ids = [ids[i] for i in keep] + delta_ids
    new_vectors = np.concatenate([vectors[keep], np.stack([live.delta.vectors[p] for p in delta_ids])]) \
        if delta_ids else vectors[keep]
    new_keys = [keys[i] for i in keep] + [live.delta.rows[p]["shard_key"] for p in delta_ids]
    kept_products = base_products.filter(pc.invert(pc.is_in(
        base_products.column("product_id"), pa.array(sorted(live.tombstones), pa.string()))))
    delta_products = live.delta.products()
    products = pa.concat_tables([kept_products.select(list(_PRODUCT_COLUMNS)).cast(delta_products.schema),
                                 delta_products]) if delta_ids else kept_products.select(list(_PRODUCT_COLUMNS))
    products = products.replace_schema_metadata(base_products.schema.metadata)  # the photo folder
    version = run_id or f"compact__{new_version_id()}"
    staging = store.begin(version)
    pq.write_table(products, staging / "products.parquet")
    _write_embeddings(staging / "embeddings.parquet", new_ids, new_vectors, new_keys)
    columns = FilterColumns.from_products(products, order=new_ids)
    vector = ShardedVectorIndex.build(new_ids, new_vectors, new_keys, VectorIndexConfig(
        **settings.retrieval.vector.model_dump()), model_version=live.vector.manifest.get("model_version", "unknown"),
        columns=columns)
    vector.save(staging / "vector")
    lexical = BM25Index.build(products, LexicalConfig(**live.base_lexical.manifest["config"]), staging / "lexical")
    manifest = {**{k: v for k, v in live.manifest.items() if k not in ("vector", "lexical")}, "version": version,
                "previous": store.current_id(), "updates_through": through, "compacted_from": live.version.name,
                "vector": {k: vector.manifest[k] for k in ("vectors", "shards", "recall@10", "build_s")},
                "lexical": {"documents": lexical.documents}, "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    _carry_ranking(live.version, staging)
    store.commit(version, keep=settings.retrieval.keep_versions)
    # Entries every kept version has folded in are no longer needed, whatever rollback happens.
    folded = [json.loads((store.versions / v / "manifest.json").read_text(encoding="utf-8")).get("updates_through", 0)
              for v in store.list_versions() if (store.versions / v / "manifest.json").is_file()]
    pruned = live.log.prune(min(folded)) if folded else 0
    return {"compacted": True, "version": version, "updates_through": through, "products": len(new_ids),
            "log_entries_pruned": pruned,
            "removed": len(live.tombstones), "upserted": len(delta_ids), "recall@10": vector.manifest["recall@10"],
            "seconds": round(time.perf_counter() - started, 2)}


def _carry_ranking(base: Path, staging: Path) -> None:
    """The base version's learned ranking policy, carried into the compacted version (the same
    encoder and reranker; a few changed products do not re-learn it), saying where it came from."""
    from dataclasses import replace

    from skulens.retrieval.ranking import FILE, RankingPolicy

    if (base / FILE).is_file():
        policy = RankingPolicy.load(base)
        replace(policy, learned_on=f"{policy.learned_on} (carried over by compaction from {base.name})").save(staging)


def _write_embeddings(path: Path, ids: list[str], vectors: np.ndarray, keys: list[str | None]) -> None:
    vec = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])
    pq.write_table(pa.table({"product_id": pa.array(ids, pa.string()), "shard_key": pa.array(keys, pa.string()),
                             "fused_vec": vec}), path)
