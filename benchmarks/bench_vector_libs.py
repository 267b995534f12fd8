"""Benchmark: FAISS HNSW (flat and SQ8) against hnswlib and usearch on the same real embeddings.

Vectors: the fused product vectors of the fashion catalogue written by ``build_index``
(``embeddings.parquet`` of the current index version, 256-d). Beyond the real vectors the corpus is
**scaled by perturbation** (each extra vector = a random real one + Gaussian noise, renormalised):
labelled as such in the report. Queries: 1,000 held-out perturbed real vectors; ground truth by
exact inner-product search (FAISS flat). Every library gets the same graph parameters (M, ef
construction) and the same threads; search ``ef`` is swept and, per library, the smallest ``ef``
reaching recall@10 >= 0.95 is reported with its single-query latency (1 thread) and its batch QPS
(all threads).

    .venv/bin/pip install -c requirements/lock.txt -e .[bench]
    .venv/bin/python benchmarks/bench_vector_libs.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _report import machine_description, write_report

EFS = (10, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def real_vectors(path: Path | None) -> np.ndarray:
    import pyarrow.parquet as pq

    from skulens.pipelines.build_index import index_store
    from skulens.settings import load_settings

    if path is None:
        current = index_store(load_settings("local"), "fashion").current()
        if current is None:
            raise SystemExit("no published fashion index: run `make demo` (or skulens pipeline build-index) first")
        path = current / "embeddings.parquet"
    col = pq.read_table(path, columns=["fused_vec"]).column("fused_vec").combine_chunks()
    arr = np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, col.type.list_size)
    return np.unique(arr, axis=0)  # products sharing a title and photo have identical vectors


def scaled(real: np.ndarray, n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    if n <= len(real):
        return real[rng.choice(len(real), n, replace=False)]
    extra = real[rng.integers(0, len(real), n - len(real))] + rng.normal(0, sigma, (n - len(real), real.shape[1]))
    out = np.concatenate([real, extra.astype(np.float32)])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


class Faiss:
    def __init__(self, kind: str) -> None:
        self.kind, self.name = kind, {"hnsw": "faiss HNSWFlat", "hnsw_sq8": "faiss HNSW-SQ8"}[kind]

    def build(self, x: np.ndarray, m: int, efc: int, threads: int) -> None:
        import faiss

        faiss.omp_set_num_threads(threads)
        if self.kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        else:
            self.index = faiss.IndexHNSWSQ(x.shape[1], faiss.ScalarQuantizer.QT_8bit, m, faiss.METRIC_INNER_PRODUCT)
            self.index.train(x)
        self.index.hnsw.efConstruction = efc
        self.index.add(x)

    def size_mb(self) -> float:
        import faiss

        return len(faiss.serialize_index(self.index)) / 2**20

    def search(self, q: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        import faiss

        faiss.omp_set_num_threads(threads)
        self.index.hnsw.efSearch = ef
        return self.index.search(q, k)[1]


class Hnswlib:
    name = "hnswlib"

    def build(self, x: np.ndarray, m: int, efc: int, threads: int) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=x.shape[1])
        self.index.init_index(max_elements=len(x), M=m, ef_construction=efc, random_seed=1)
        self.index.add_items(x, np.arange(len(x)), num_threads=threads)

    def size_mb(self) -> float:
        with tempfile.TemporaryDirectory() as d:
            self.index.save_index(f"{d}/i.bin")
            return Path(f"{d}/i.bin").stat().st_size / 2**20

    def search(self, q: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        self.index.set_ef(max(ef, k))
        return self.index.knn_query(q, k=k, num_threads=threads)[0]


class Usearch:
    name = "usearch"

    def build(self, x: np.ndarray, m: int, efc: int, threads: int) -> None:
        from usearch.index import Index

        self.index = Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=m, expansion_add=efc)
        self.index.add(np.arange(len(x)), x, threads=threads)

    def size_mb(self) -> float:
        return self.index.memory_usage / 2**20

    def search(self, q: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        self.index.expansion_search = ef
        return self.index.search(q, k, threads=threads).keys


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def run_size(real: np.ndarray, n: int, args: argparse.Namespace) -> list[dict]:
    import faiss

    rng = np.random.default_rng(0)
    base = scaled(real, n, args.sigma, rng)
    picks = real[rng.integers(0, len(real), args.queries)]
    queries = picks + rng.normal(0, args.query_sigma, picks.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(base.shape[1])
    exact.add(base)
    truth = exact.search(queries, 10)[1]
    del exact
    rows = []
    for lib in (Faiss("hnsw"), Faiss("hnsw_sq8"), Hnswlib(), Usearch()):
        gc.collect()
        rss0 = _rss_mb()
        t = time.perf_counter()
        lib.build(base, args.m, args.ef_construction, args.threads)
        build_s = time.perf_counter() - t
        rss = _rss_mb() - rss0
        sweep = []
        for ef in EFS:
            r = recall(lib.search(queries, 10, ef, args.threads), truth)
            sweep.append({"ef": ef, "recall@10": r})
            if r >= args.target:
                break
        chosen = next((s for s in sweep if s["recall@10"] >= args.target), sweep[-1])
        lat = []
        for q in queries[:300]:
            t = time.perf_counter()
            lib.search(q[None, :], 10, chosen["ef"], 1)
            lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        lib.search(queries, 10, chosen["ef"], args.threads)
        qps = len(queries) / (time.perf_counter() - t)
        rows.append({"library": lib.name, "vectors": n, "build_s": round(build_s, 1),
                     "build_s_per_1M": round(build_s * 1e6 / n, 1), "index_mb": round(lib.size_mb(), 1),
                     "rss_growth_mb": round(rss, 1), "ef_search": chosen["ef"],
                     "recall@10": round(chosen["recall@10"], 4), "p50_ms": round(float(np.median(lat)) * 1000, 3),
                     "p95_ms": round(float(np.percentile(lat, 95)) * 1000, 3),
                     "qps_batch": round(qps), "sweep": sweep})
        print(rows[-1], flush=True)
        del lib
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--embeddings", type=Path, default=None, help="embeddings.parquet (default: current index)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sigma", type=float, default=0.02, help="per-dimension noise of the perturbed copies")
    parser.add_argument("--query-sigma", type=float, default=0.04, help="per-dimension noise of the queries")
    parser.add_argument("--target", type=float, default=0.95)
    args = parser.parse_args()

    real = real_vectors(args.embeddings)
    rows = []
    for n in args.sizes:
        rows += run_size(real, n, args)
    lines = [
        "# Vector search libraries on real embeddings: FAISS vs hnswlib vs usearch", "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine_description()}.",
        f"Command: `.venv/bin/python benchmarks/bench_vector_libs.py {' '.join(sys.argv[1:])}`".rstrip(), "",
        f"Corpus: {len(real):,} distinct real fused product vectors of the fashion catalogue ({real.shape[1]}-d, "
        "skulens embedder); larger sizes add **perturbed copies of real vectors** (Gaussian noise, "
        f"sigma {args.sigma} per dimension, renormalised) — synthetic beyond {len(real):,}. {args.queries:,} "
        f"queries = real vectors + noise (sigma {args.query_sigma}); truth = exact inner-product top 10. "
        "Same graph parameters for all: "
        f"M {args.m}, ef construction {args.ef_construction}, {args.threads} threads. Each library at the "
        f"smallest swept ef reaching recall@10 >= {args.target}; latency = one query at a time on 1 thread; "
        f"QPS = the {args.queries:,} queries as one batch on all threads. Index MB = serialised size (usearch: its "
        "reported memory use); RSS growth = process memory added by the build.", "",
        "| vectors | library | build s | build s per 1M | index MB | RSS growth MB | ef | recall@10 | p50 ms | "
        "p95 ms | QPS (batch) |", "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['vectors']:,} | {r['library']} | {r['build_s']} | {r['build_s_per_1M']} | {r['index_mb']} | "
              f"{r['rss_growth_mb']} | {r['ef_search']} | {r['recall@10']:.4f} | {r['p50_ms']:.3f} | "
              f"{r['p95_ms']:.3f} | {r['qps_batch']:,} |" for r in rows]
    write_report("vector_libs", lines, {"machine": machine_description(), "command": sys.argv, "rows": rows,
                                        "real_vectors": len(real), "sigma": args.sigma})


if __name__ == "__main__":
    main()
