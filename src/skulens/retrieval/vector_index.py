"""Vector index: FAISS HNSW (inner product on normalised vectors), sharded by category, with a router.

* **Shards**: one index per category value (``shard_key`` per product, e.g. the top category);
  shards smaller than ``min_shard_size`` are merged into one ``_merged`` shard.
* **Router**: each shard's centroid (mean of its normalised vectors); a query goes to the
  ``route_top_n`` shards whose centroids score highest, or to every shard when the router is
  unsure (the best and the N-th best centroid scores are within ``route_margin``).
* **Kinds**: ``hnsw`` (HNSW over full vectors), ``hnsw_sq8`` (HNSW over 8-bit scalar-quantized
  vectors, 4x less memory), ``hnsw_pq`` (HNSW over product-quantized codes, ``pq_bytes`` per
  vector, 16x less at the default; lower recall, so the gate decides), ``flat`` (exact, for small
  shards and as the reference); ``auto`` picks the most exact kind within ``memory_budget_mb``.
* **Filters and exclusions** (:class:`~skulens.retrieval.filters.Filters`, deleted ids) are applied
  inside the search: HNSW shards search with a FAISS ``IDSelectorBitmap`` of the passing rows, and
  a shard where at most ``exact_filter_below`` rows pass is searched exactly over those rows (a
  graph search with a very selective filter loses recall); the router only considers shards that
  have passing rows.
* **Recall gate**: every build is compared with exact search over all vectors on sampled queries;
  the build fails (:class:`RecallGateError`) below ``min_recall`` (recall@10, default 0.95).
* **Manifest**: model version, counts per shard, parameters, recall, build time, SHA-256 of every
  file; loading verifies the checksums.

Publishing goes through :class:`~skulens.storage.VersionedDir` (new folder, then the ``CURRENT``
pointer swap), so the previous version stays loadable for rollback.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from skulens.retrieval.filters import FilterColumns, Filters
from skulens.vectors import normalise as _normalise

MERGED = "_merged"


class RecallGateError(RuntimeError):
    """A built index whose recall against exact search is below the gate."""


@dataclass(frozen=True)
class VectorIndexConfig:
    # "auto": the most exact of hnsw, hnsw_sq8, hnsw_pq within memory_budget_mb (see choose_kind).
    kind: Literal["hnsw", "hnsw_sq8", "hnsw_pq", "flat", "auto"] = "hnsw"
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    min_shard_size: int = 500
    route_top_n: int = 3
    route_margin: float = 0.1
    min_recall: float = 0.95
    gate_queries: int = 500
    exact_filter_below: int = 2000
    # Budgets (None: no budget). With tune_ef the build sweeps ef_search upwards from ef_search and
    # keeps the smallest value that passes the recall gate: the fastest index at the target recall.
    memory_budget_mb: float | None = None
    latency_budget_ms: float | None = None
    tune_ef: bool = False
    pq_bytes: int | None = None  # hnsw_pq: bytes per vector (sub-quantizers of 8 bits); None: dim / 4
    seed: int = 13


EF_SWEEP = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def estimate_mb(kind: str, n: int, dim: int, m: int) -> float:
    """Index memory estimate: the vectors (4 bytes per value, 1 with SQ8) plus HNSW links
    (about 2·M neighbours of 4 bytes per vector at level 0, plus upper levels)."""
    per_vector = {"flat": 4 * dim, "hnsw": 4 * dim + 8 * m + 16, "hnsw_sq8": dim + 8 * m + 16,
                  "hnsw_pq": max(1, dim // 4) + 8 * m + 16}[kind]
    return n * per_vector * 1.05 / 2**20


def choose_kind(config: VectorIndexConfig, n: int, dim: int) -> str:
    """The index kind for ``n`` vectors: the configured one, or for ``auto`` the most exact kind
    whose estimate fits ``memory_budget_mb`` (ValueError when none does)."""
    if config.kind != "auto":
        kind = config.kind
    else:
        budget = config.memory_budget_mb
        fitting = [k for k in ("hnsw", "hnsw_sq8", "hnsw_pq")
                   if budget is None or estimate_mb(k, n, dim, config.m) <= budget]
        if not fitting:
            raise ValueError(f"{n:,} vectors of {dim} dimensions need about "
                             f"{estimate_mb('hnsw_pq', n, dim, config.m):,.0f} MB even with PQ, over the memory "
                             f"budget of {budget:,.0f} MB: raise the budget, lower m, or use the milvus store")
        kind = fitting[0]
    if config.memory_budget_mb is not None and estimate_mb(kind, n, dim, config.m) > config.memory_budget_mb:
        raise ValueError(f"kind {kind} needs about {estimate_mb(kind, n, dim, config.m):,.0f} MB for {n:,} vectors, "
                         f"over the memory budget of {config.memory_budget_mb:,.0f} MB (try kind: auto)")
    return kind


def _new_index(dim: int, size: int, config: VectorIndexConfig):  # noqa: ANN202 - faiss.Index
    import faiss

    if config.kind == "flat" or size < 2 * config.m:
        return faiss.IndexFlatIP(dim)
    if config.kind == "hnsw_sq8":
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, config.m, faiss.METRIC_INNER_PRODUCT)
    elif config.kind == "hnsw_pq":
        index = faiss.IndexHNSWPQ(dim, _pq_codes(dim, config), config.m, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexHNSWFlat(dim, config.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = config.ef_construction
    return index


def _pq_codes(dim: int, config: VectorIndexConfig) -> int:
    """Sub-quantizers of the PQ kind: ``pq_bytes`` (default dim / 4), a divisor of ``dim``."""
    wanted = config.pq_bytes or max(1, dim // 4)
    return max(d for d in range(1, min(wanted, dim) + 1) if dim % d == 0)


def _set_ef(index, ef: int) -> None:  # noqa: ANN001
    import faiss

    hnsw = faiss.downcast_index(index)
    if hasattr(hnsw, "hnsw"):
        hnsw.hnsw.efSearch = ef


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ShardedVectorIndex:
    """Category-sharded FAISS index with a centroid router."""

    def __init__(self, shards: dict[str, Any], shard_rows: dict[str, np.ndarray], ids: np.ndarray,
                 centroids: dict[str, np.ndarray], config: VectorIndexConfig, columns: FilterColumns | None = None,
                 manifest: dict[str, Any] | None = None) -> None:
        self.shards, self.shard_rows, self.centroids = shards, shard_rows, centroids
        self.ids = ids  # every indexed id, in global row order; shard_rows index into it
        self.shard_ids = {name: ids[rows] for name, rows in shard_rows.items()}
        self.columns = columns
        self.config = config
        self.manifest = manifest or {}
        self._names = sorted(shards)
        self._centroid_matrix = np.stack([centroids[n] for n in self._names]) if self._names else None
        self._row = {pid: i for i, pid in enumerate(ids)}
        self._local = np.empty(len(ids), dtype=np.int64)
        self._shard_of = np.empty(len(ids), dtype=np.int64)
        for number, name in enumerate(self._names):
            self._local[shard_rows[name]] = np.arange(len(shard_rows[name]))
            self._shard_of[shard_rows[name]] = number

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, product_id: object) -> bool:
        return product_id in self._row

    # -- build ---------------------------------------------------------------------------------
    @classmethod
    def build(cls, ids: Sequence[str], vectors: np.ndarray, shard_keys: Sequence[str | None],
              config: VectorIndexConfig | None = None, model_version: str = "unknown",
              columns: FilterColumns | None = None) -> ShardedVectorIndex:
        """Build every shard, then run the recall gate (raises RecallGateError below it).

        ``columns``: the filter columns aligned with ``ids``; without them filtered searches fail."""
        config = config or VectorIndexConfig()
        if len(ids) != len(vectors) or len(ids) != len(shard_keys):
            raise ValueError(f"ids ({len(ids)}), vectors ({len(vectors)}) and shard keys ({len(shard_keys)}) differ")
        if len(set(ids)) != len(ids):
            raise ValueError("product ids must be unique")
        if columns is not None and len(columns.prices) != len(ids):
            raise ValueError(f"filter columns have {len(columns.prices)} rows for {len(ids)} ids")
        started = time.perf_counter()
        vectors = _normalise(vectors)
        config = replace(config, kind=choose_kind(config, len(ids), vectors.shape[1]))
        keys = np.array([k or MERGED for k in shard_keys], dtype=object)
        names, counts = np.unique(keys, return_counts=True)
        small = {n for n, c in zip(names, counts, strict=True) if c < config.min_shard_size}
        keys = np.array([MERGED if k in small else k for k in keys], dtype=object)
        id_array = np.array(ids, dtype=object)
        shards, shard_rows, centroids = {}, {}, {}
        for name in sorted(set(keys)):
            rows = np.flatnonzero(keys == name)
            index = _new_index(vectors.shape[1], len(rows), config)
            if config.kind in ("hnsw_sq8", "hnsw_pq") and not index.is_trained:
                index.train(vectors[rows])
            index.add(vectors[rows])
            _set_ef(index, config.ef_search)
            shards[name], shard_rows[name] = index, rows
            centroids[name] = _normalise(vectors[rows].mean(axis=0, keepdims=True))[0]
        built = cls(shards, shard_rows, id_array, centroids, config, columns)
        recall = built.recall_against_exact(vectors, id_array)
        if config.tune_ef:
            recall = built._tune_ef(vectors, id_array, recall)
            config = built.config
        latency = built._latency_ms(vectors)
        built.manifest = {
            "kind": "faiss-sharded", "model_version": model_version, "vectors": len(ids),
            "dim": int(vectors.shape[1]), "shards": {n: len(shard_rows[n]) for n in sorted(shards)},
            "merged_categories": sorted(str(s) for s in small), "config": asdict(config),
            "recall@10": recall, "build_s": round(time.perf_counter() - started, 2),
            "latency_p50_ms": latency, "estimated_mb": round(estimate_mb(config.kind, len(ids), vectors.shape[1],
                                                                          config.m), 1),
            "within_latency_budget": None if config.latency_budget_ms is None else
            latency <= config.latency_budget_ms,
        }
        if recall < config.min_recall:
            raise RecallGateError(f"recall@10 against exact search is {recall:.4f} < {config.min_recall} "
                                  f"({config.gate_queries} sampled queries, kind {config.kind}, ef_search "
                                  f"{config.ef_search}, route_top_n {config.route_top_n})")
        return built

    def _tune_ef(self, vectors: np.ndarray, ids: np.ndarray, recall: float) -> float:
        """Raise ef_search along EF_SWEEP until the recall gate passes (keeps the configured ef when
        it already passes)."""
        for ef in [e for e in EF_SWEEP if e > self.config.ef_search]:
            if recall >= self.config.min_recall:
                break
            self.config = replace(self.config, ef_search=ef)
            for index in self.shards.values():
                _set_ef(index, ef)
            recall = self.recall_against_exact(vectors, ids)
        return recall

    def _latency_ms(self, vectors: np.ndarray, probes: int = 200) -> float:
        """Median single-query search time (ms) on catalogue vectors, as built."""
        rng = np.random.default_rng(self.config.seed + 1)
        sample = vectors[rng.choice(len(vectors), min(probes, len(vectors)), replace=False)]
        times = []
        for q in sample:
            t = time.perf_counter()
            self.search(q, 10)
            times.append(time.perf_counter() - t)
        return round(float(np.median(times)) * 1000, 3)

    # -- search --------------------------------------------------------------------------------
    def route(self, query: np.ndarray, among: Sequence[str] | None = None) -> list[str]:
        """Shards to search for one normalised query vector (``among``: the shards allowed)."""
        names = list(self._names if among is None else among)
        if len(names) <= self.config.route_top_n:
            return names
        rows = [self._names.index(n) for n in names] if among is not None else slice(None)
        scores = self._centroid_matrix[rows] @ query
        order = np.argsort(-scores)
        if scores[order[0]] - scores[order[self.config.route_top_n - 1]] < self.config.route_margin:
            return names  # unsure: the best shards are too close to call
        return [names[i] for i in order[:self.config.route_top_n]]

    def allowed(self, filters: Filters | None = None, exclude: Sequence[str] | set[str] = ()) -> np.ndarray | None:
        """Boolean mask over the global rows that pass ``filters`` and are not in ``exclude``, or
        None when every row passes."""
        mask = None
        if filters is not None and not filters.empty:
            if self.columns is None:
                raise ValueError("this vector index was built without filter columns; rebuild it to filter")
            mask = self.columns.mask(filters)
        dropped = [self._row[pid] for pid in exclude if pid in self._row]
        if dropped:
            mask = np.ones(len(self.ids), dtype=bool) if mask is None else mask.copy()
            mask[dropped] = False
        return mask

    def search(self, queries: np.ndarray, k: int = 10, shards: Sequence[str] | None = None,
               filters: Filters | None = None, exclude: Sequence[str] | set[str] = ()
               ) -> list[list[tuple[str, float]]]:
        """Top-``k`` (id, score) per query among the rows passing ``filters`` and not in ``exclude``,
        merged across the routed (or given) shards by score."""
        queries = _normalise(np.atleast_2d(queries))
        mask = self.allowed(filters, exclude)
        among = shards
        passing: dict[str, np.ndarray] = {}
        if mask is not None:
            for name in (shards or self._names):
                local = mask[self.shard_rows[name]]
                if local.any():
                    passing[name] = local
            among = list(passing)
        # Queries routed to the same shard are searched there in one call (FAISS runs a batch of
        # queries in parallel and pays its per-call overhead once).
        routed: dict[str, list[int]] = {}
        for number, q in enumerate(queries):
            for name in (among if shards is not None else self.route(q, among)):
                routed.setdefault(name, []).append(number)
        candidates: list[list[tuple[str, float]]] = [[] for _ in range(len(queries))]
        for name, numbers in routed.items():
            for number, hits in zip(numbers, self._search_shard(name, queries[numbers], k, passing.get(name)),
                                    strict=True):
                candidates[number] += hits
        return [sorted(found, key=lambda c: -c[1])[:k] for found in candidates]

    def _search_shard(self, name: str, queries: np.ndarray, k: int, local: np.ndarray | None
                      ) -> list[list[tuple[str, float]]]:
        """Top-``k`` of shard ``name`` for each row of ``queries`` (among the rows ``local`` allows)."""
        import faiss

        index, ids = self.shards[name], self.shard_ids[name]
        if local is None:
            distances, rows = index.search(queries, min(k, index.ntotal))
        elif local.sum() <= self.config.exact_filter_below or not hasattr(faiss.downcast_index(index), "hnsw"):
            chosen = np.flatnonzero(local)
            scores = index.reconstruct_batch(chosen) @ queries.T  # (chosen, queries)
            out = []
            for column in scores.T:
                top = np.argsort(-column, kind="stable")[:k]
                out.append([(ids[chosen[t]], float(column[t])) for t in top])
            return out
        else:
            bitmap = np.packbits(local.astype(np.uint8), bitorder="little")
            selector = faiss.IDSelectorBitmap(len(local), faiss.swig_ptr(bitmap))
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.config.ef_search, k))
            distances, rows = index.search(queries, min(k, index.ntotal), params=params)
        return [[(ids[r], float(d)) for d, r in zip(drow, rrow, strict=True) if r >= 0]
                for drow, rrow in zip(distances, rows, strict=True)]

    def vectors(self, product_ids: Sequence[str]) -> np.ndarray:
        """The stored (normalised; decoded when quantised) vectors of ``product_ids``."""
        rows = [self._row[pid] for pid in product_ids]
        if not rows:
            return np.zeros((0, self.manifest.get("dim", 0)), np.float32)
        return np.stack([self.shards[self._names[self._shard_of[r]]].reconstruct(int(self._local[r])) for r in rows])

    def recall_against_exact(self, vectors: np.ndarray, ids: np.ndarray, k: int = 10) -> float:
        """Recall@k of routed search against exact search over all vectors (:func:`recall_against_exact`)."""
        return recall_against_exact(self.search, vectors, ids, k, self.config.gate_queries, self.config.seed)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        """Shards, ids, centroids and ``manifest.json`` (with the SHA-256 of every file)."""
        import faiss

        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for i, name in enumerate(self._names):
            stem = f"shard-{i:04d}"
            faiss.write_index(self.shards[name], str(folder / f"{stem}.faiss"))
            np.save(folder / f"{stem}.rows.npy", self.shard_rows[name])
            files[name] = stem
        np.save(folder / "centroids.npy", self._centroid_matrix)
        np.save(folder / "ids.npy", self.ids.astype(str))
        if self.columns is not None:
            import pyarrow.parquet as pq

            pq.write_table(self.columns.to_table(), folder / "columns.parquet")
        checksums = {p.name: _sha256(p) for p in sorted(folder.glob("*"))
                     if p.suffix in (".faiss", ".npy", ".parquet")}
        manifest = {**self.manifest, "files": files, "checksums": checksums}
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> ShardedVectorIndex:
        """Load a saved index; a file whose checksum differs from the manifest is an error.

        ``mmap``: the shards' vector codes (the bulk of an HNSW file: 2 KB a 512-d vector against
        about 0.3 KB of graph) are memory-mapped read-only instead of copied, so the serving
        workers of one machine share one copy in the page cache."""
        import faiss

        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        for name, digest in manifest["checksums"].items():
            if _sha256(folder / name) != digest:
                raise ValueError(f"{folder / name}: checksum differs from the manifest (corrupt or altered)")
        config = VectorIndexConfig(**manifest["config"])
        names = sorted(manifest["files"])
        matrix = np.load(folder / "centroids.npy")
        shards, shard_rows, centroids = {}, {}, {}
        for row, name in enumerate(names):
            stem = manifest["files"][name]
            flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
            shards[name] = faiss.read_index(str(folder / f"{stem}.faiss"), flags)
            _set_ef(shards[name], config.ef_search)
            shard_rows[name] = np.load(folder / f"{stem}.rows.npy")
            centroids[name] = matrix[row]
        columns = None
        if (folder / "columns.parquet").is_file():
            import pyarrow.parquet as pq

            columns = FilterColumns.from_table(pq.read_table(folder / "columns.parquet"))
        ids = np.load(folder / "ids.npy").astype(object)
        return cls(shards, shard_rows, ids, centroids, config, columns, manifest)


def recall_against_exact(search: Any, vectors: np.ndarray, ids: Sequence[str], k: int = 10, queries: int = 500,
                         seed: int = 13) -> float:
    """Recall@k of ``search(queries, k)`` (any vector store) against exact inner-product search.

    Tie-aware: a returned item counts when its exact score reaches the k-th exact score (a
    catalogue has many identical vectors, e.g. products with the same title and no photo, and
    which of several equal candidates fills the last places is arbitrary)."""
    import faiss

    vectors = _normalise(vectors)
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(vectors), min(queries, len(vectors)), replace=False)
    # Queries near, not equal to, catalogue vectors: real queries are never exact copies.
    noise = rng.normal(scale=0.05, size=(len(sample), vectors.shape[1])).astype(np.float32)
    probes = _normalise(vectors[sample] + noise)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    # A catalogue smaller than k has only len(vectors) right answers per query (exact search pads
    # the rest), so recall is over what can be found: 5 products found of 5 is 1.0, not 0.5.
    reachable = min(k, len(vectors))
    scores, _ = exact.search(probes, reachable)
    row = {pid: i for i, pid in enumerate(ids)}
    hits = 0
    for q, kth, got in zip(probes, scores[:, -1], search(probes, k), strict=True):
        true = [float(vectors[row[pid]] @ q) for pid, _ in got]
        hits += min(reachable, sum(t >= kth - 1e-5 for t in true))
    return float(hits / (len(sample) * reachable))
