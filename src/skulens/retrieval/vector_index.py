"""Vector index: FAISS HNSW (inner product on normalised vectors), sharded by category, with a router.

* **Shards**: one index per category value (``shard_key`` per product, e.g. the top category);
  shards smaller than ``min_shard_size`` are merged into one ``_merged`` shard.
* **Router**: each shard's centroid (mean of its normalised vectors); a query goes to the
  ``route_top_n`` shards whose centroids score highest, or to every shard when the router is
  unsure (the best and the N-th best centroid scores are within ``route_margin``).
* **Kinds**: ``hnsw`` (HNSW over full vectors), ``hnsw_sq8`` (HNSW over 8-bit scalar-quantized
  vectors, 4x less memory), ``flat`` (exact, for small shards and as the reference).
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from skulens.vectors import normalise as _normalise

MERGED = "_merged"


class RecallGateError(RuntimeError):
    """A built index whose recall against exact search is below the gate."""


@dataclass(frozen=True)
class VectorIndexConfig:
    kind: Literal["hnsw", "hnsw_sq8", "flat"] = "hnsw"
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    min_shard_size: int = 500
    route_top_n: int = 3
    route_margin: float = 0.1
    min_recall: float = 0.95
    gate_queries: int = 500
    seed: int = 13


def _new_index(dim: int, size: int, config: VectorIndexConfig):  # noqa: ANN202 - faiss.Index
    import faiss

    if config.kind == "flat" or size < 2 * config.m:
        return faiss.IndexFlatIP(dim)
    if config.kind == "hnsw_sq8":
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, config.m, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexHNSWFlat(dim, config.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = config.ef_construction
    return index


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

    def __init__(self, shards: dict[str, Any], shard_ids: dict[str, np.ndarray], centroids: dict[str, np.ndarray],
                 config: VectorIndexConfig, manifest: dict[str, Any] | None = None) -> None:
        self.shards, self.shard_ids, self.centroids = shards, shard_ids, centroids
        self.config = config
        self.manifest = manifest or {}
        self._names = sorted(shards)
        self._centroid_matrix = np.stack([centroids[n] for n in self._names]) if self._names else None

    # -- build ---------------------------------------------------------------------------------
    @classmethod
    def build(cls, ids: Sequence[str], vectors: np.ndarray, shard_keys: Sequence[str | None],
              config: VectorIndexConfig | None = None, model_version: str = "unknown") -> ShardedVectorIndex:
        """Build every shard, then run the recall gate (raises RecallGateError below it)."""
        config = config or VectorIndexConfig()
        if len(ids) != len(vectors) or len(ids) != len(shard_keys):
            raise ValueError(f"ids ({len(ids)}), vectors ({len(vectors)}) and shard keys ({len(shard_keys)}) differ")
        if len(set(ids)) != len(ids):
            raise ValueError("product ids must be unique")
        started = time.perf_counter()
        vectors = _normalise(vectors)
        keys = np.array([k or MERGED for k in shard_keys], dtype=object)
        names, counts = np.unique(keys, return_counts=True)
        small = {n for n, c in zip(names, counts, strict=True) if c < config.min_shard_size}
        keys = np.array([MERGED if k in small else k for k in keys], dtype=object)
        id_array = np.array(ids, dtype=object)
        shards, shard_ids, centroids = {}, {}, {}
        for name in sorted(set(keys)):
            rows = np.flatnonzero(keys == name)
            index = _new_index(vectors.shape[1], len(rows), config)
            if config.kind == "hnsw_sq8" and not index.is_trained:
                index.train(vectors[rows])
            index.add(vectors[rows])
            _set_ef(index, config.ef_search)
            shards[name], shard_ids[name] = index, id_array[rows]
            centroids[name] = _normalise(vectors[rows].mean(axis=0, keepdims=True))[0]
        built = cls(shards, shard_ids, centroids, config)
        recall = built.recall_against_exact(vectors, id_array)
        built.manifest = {
            "kind": "faiss-sharded", "model_version": model_version, "vectors": len(ids),
            "dim": int(vectors.shape[1]), "shards": {n: len(shard_ids[n]) for n in sorted(shards)},
            "merged_categories": sorted(str(s) for s in small), "config": asdict(config),
            "recall@10": recall, "build_s": round(time.perf_counter() - started, 2),
        }
        if recall < config.min_recall:
            raise RecallGateError(f"recall@10 against exact search is {recall:.4f} < {config.min_recall} "
                                  f"({config.gate_queries} sampled queries, kind {config.kind}, ef_search "
                                  f"{config.ef_search}, route_top_n {config.route_top_n})")
        return built

    # -- search --------------------------------------------------------------------------------
    def route(self, query: np.ndarray) -> list[str]:
        """Shards to search for one normalised query vector."""
        if len(self._names) <= self.config.route_top_n:
            return list(self._names)
        scores = self._centroid_matrix @ query
        order = np.argsort(-scores)
        top = order[:self.config.route_top_n]
        if scores[order[0]] - scores[order[self.config.route_top_n - 1]] < self.config.route_margin:
            return list(self._names)  # unsure: the best shards are too close to call
        return [self._names[i] for i in top]

    def search(self, queries: np.ndarray, k: int = 10, shards: Sequence[str] | None = None
               ) -> list[list[tuple[str, float]]]:
        """Top-``k`` (id, score) per query, merged across the routed (or given) shards by score."""
        queries = _normalise(np.atleast_2d(queries))
        out = []
        for q in queries:
            candidates: list[tuple[str, float]] = []
            for name in (shards or self.route(q)):
                index = self.shards[name]
                distances, rows = index.search(q[None, :], min(k, index.ntotal))
                ids = self.shard_ids[name]
                candidates += [(ids[r], float(d)) for d, r in zip(distances[0], rows[0], strict=True) if r >= 0]
            out.append(sorted(candidates, key=lambda c: -c[1])[:k])
        return out

    def recall_against_exact(self, vectors: np.ndarray, ids: np.ndarray, k: int = 10) -> float:
        """Recall@k of routed search against exact inner-product search over all vectors.

        Tie-aware: a returned item counts when its exact score reaches the k-th exact score (a
        catalogue has many identical vectors, e.g. products with the same title and no photo, and
        which of several equal candidates fills the last places is arbitrary)."""
        import faiss

        rng = np.random.default_rng(self.config.seed)
        sample = rng.choice(len(vectors), min(self.config.gate_queries, len(vectors)), replace=False)
        # Queries near, not equal to, catalogue vectors: real queries are never exact copies.
        noise = rng.normal(scale=0.05, size=(len(sample), vectors.shape[1])).astype(np.float32)
        queries = _normalise(vectors[sample] + noise)
        exact = faiss.IndexFlatIP(vectors.shape[1])
        exact.add(vectors)
        scores, _ = exact.search(queries, k)
        row = {pid: i for i, pid in enumerate(ids)}
        hits = 0
        for q, kth, got in zip(queries, scores[:, -1], self.search(queries, k), strict=True):
            true = [float(vectors[row[pid]] @ q) for pid, _ in got]
            hits += min(k, sum(t >= kth - 1e-5 for t in true))
        return float(hits / (len(sample) * k))

    # -- persistence ---------------------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        """Shards, ids, centroids and ``manifest.json`` (with the SHA-256 of every file)."""
        import faiss

        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for i, name in enumerate(self._names):
            stem = f"shard-{i:04d}"
            faiss.write_index(self.shards[name], str(folder / f"{stem}.faiss"))
            np.save(folder / f"{stem}.ids.npy", self.shard_ids[name].astype(str))
            files[name] = stem
        np.save(folder / "centroids.npy", self._centroid_matrix)
        checksums = {p.name: _sha256(p) for p in sorted(folder.glob("*")) if p.suffix in (".faiss", ".npy")}
        manifest = {**self.manifest, "files": files, "checksums": checksums}
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: Path) -> ShardedVectorIndex:
        """Load a saved index; a file whose checksum differs from the manifest is an error."""
        import faiss

        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        for name, digest in manifest["checksums"].items():
            if _sha256(folder / name) != digest:
                raise ValueError(f"{folder / name}: checksum differs from the manifest (corrupt or altered)")
        config = VectorIndexConfig(**manifest["config"])
        names = sorted(manifest["files"])
        matrix = np.load(folder / "centroids.npy")
        shards, shard_ids, centroids = {}, {}, {}
        for row, name in enumerate(names):
            stem = manifest["files"][name]
            shards[name] = faiss.read_index(str(folder / f"{stem}.faiss"))
            _set_ef(shards[name], config.ef_search)
            shard_ids[name] = np.load(folder / f"{stem}.ids.npy").astype(object)
            centroids[name] = matrix[row]
        return cls(shards, shard_ids, centroids, config, manifest)
