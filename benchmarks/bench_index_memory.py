"""Benchmark: memory, recall, latency and build time of the served vector index kinds at ``--n``
products (default 1M): ``hnsw`` (full vectors), ``hnsw_sq8`` (8-bit codes), ``hnsw_pq`` (PQ codes).

Vectors are the published fashion index's real embeddings **scaled by perturbed copies** (as in
``bench_serving.py``: sigma 0.02, renormalised), sharded by top category and built by the served
code (``ShardedVectorIndex.build``: recall gate against exact search, ef_search tuned upwards until
it passes, ef_construction 160, every shard searched). Each built index is then loaded in a fresh
process, once copied into memory and once memory-mapped (how the service loads it, so that its
workers share the vector codes), and measured there:

* **file MB**: the saved index (shards, ids, filter columns);
* **RSS copied / private mapped MB**: what loading adds to a process, copied, and what stays private
  to it when the codes are mapped (the graph, ids, routing tables: paid once per worker);
* **recall@10** against exact search (the build's gate) and single-query **p50/p95** latency on
  1,000 probe queries (catalogue vectors plus noise), one thread.

    .venv/bin/python benchmarks/bench_index_memory.py [--n 1000000] [--kinds hnsw hnsw_sq8 hnsw_pq]

A 10M run (``--n 10000000 --kinds hnsw_sq8``) needs about 10 GB for the float32 input vectors alone
plus the index, and a build of roughly 40 minutes or more on 2 cores: it was not run on the 24 GB,
2-core machines here (docs/benchmarks/index_memory.md says so), and the command is kept for a bigger one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _report import machine_description, write_report

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, time, numpy as np
from pathlib import Path
def mem():
    fields = {l.split(':')[0]: int(l.split()[1]) for l in Path('/proc/self/smaps_rollup').read_text().splitlines()[1:]
              if l.split()[-1] == 'kB'}
    # Anonymous: memory this process owns (heap: graph, ids, tables); the rest of its RSS is file
    # pages (the mapped codes), which every process mapping the same file shares in the page cache.
    return fields['Rss'] / 1024, fields.get('Anonymous', 0) / 1024
from skulens.retrieval.vector_index import ShardedVectorIndex
folder, mmap, probes = Path(sys.argv[1]), sys.argv[2] == '1', np.load(sys.argv[3])
rss0, private0 = mem()
index = ShardedVectorIndex.load(folder, mmap=mmap)
rss1, private1 = mem()
times = []
for q in probes:
    t = time.perf_counter(); index.search(q, 10); times.append((time.perf_counter() - t) * 1000)
rss2, private2 = mem()
print(json.dumps({'load_rss_mb': rss1 - rss0, 'load_anon_mb': private1 - private0,
                  'after_search_rss_mb': rss2 - rss0, 'after_search_anon_mb': private2 - private0,
                  'p50_ms': float(np.percentile(times, 50)), 'p95_ms': float(np.percentile(times, 95))}))
"""


def scaled(n: int, sigma: float = 0.02) -> tuple[list[str], np.ndarray, list[str | None]]:
    from skulens.retrieval.embed import read_embeddings
    from skulens.settings import load_settings
    from skulens.storage.layout import index_store

    current = index_store(load_settings("local"), "fashion").current()
    if current is None:
        raise SystemExit("no published fashion index: run `make demo` first")
    ids, vectors, keys = read_embeddings(current / "embeddings.parquet")
    base = len(ids)
    rows = np.tile(np.arange(base), -(-n // base))[:n]
    copy = np.repeat(np.arange(-(-n // base)), base)[:n]
    rng = np.random.default_rng(0)
    out = vectors[rows].astype(np.float32)
    noisy = copy > 0
    out[noisy] += rng.normal(0, sigma, (int(noisy.sum()), vectors.shape[1])).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return ([ids[r] if c == 0 else f"{ids[r]}~{c}" for r, c in zip(rows, copy, strict=True)], out,
            [keys[r] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--kinds", nargs="+", default=["hnsw", "hnsw_sq8", "hnsw_pq"])
    parser.add_argument("--rebuild", action="store_true", help="build even where an earlier run saved the index")
    parser.add_argument("--report", default="index_memory")
    args = parser.parse_args()
    from skulens.retrieval.vector_index import RecallGateError, ShardedVectorIndex, VectorIndexConfig, estimate_mb
    from skulens.settings import load_settings

    settings = load_settings("local")
    scratch = settings.home / "bench" / "index-kinds"
    ids, vectors, keys = scaled(args.n)
    rng = np.random.default_rng(7)
    probes = vectors[rng.choice(len(vectors), 1000, replace=False)]
    probes = probes + rng.normal(0, 0.05, probes.shape).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    scratch.mkdir(parents=True, exist_ok=True)
    np.save(scratch / "probes.npy", probes)
    results = {}
    for kind in args.kinds:
        config = VectorIndexConfig(**{**settings.retrieval.vector.model_dump(), "kind": kind, "ef_construction": 160,
                                      "route_top_n": 8})
        folder = scratch / f"{kind}-{args.n}"
        if (folder / "manifest.json").is_file() and not args.rebuild:  # built by an earlier run
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        else:
            try:
                index = ShardedVectorIndex.build(ids, vectors, keys, config, model_version="bench")
            except RecallGateError as exc:  # the served build refuses it: say so, measure the others
                results[kind] = {"refused": str(exc), "estimated_mb": round(estimate_mb(
                    kind, len(ids), vectors.shape[1], config.m), 1)}
                print(kind, results[kind], flush=True)
                continue
            index.save(folder)
            manifest = index.manifest
            del index
        row = {"build_s": manifest["build_s"], "recall@10": manifest["recall@10"],
               "ef_search": manifest["config"]["ef_search"], "estimated_mb": manifest["estimated_mb"],
               "file_mb": round(sum(p.stat().st_size for p in folder.iterdir()) / 2**20, 1)}
        for mmap in (False, True):
            done = subprocess.run([sys.executable, "-c", PROBE, str(folder), "1" if mmap else "0",
                                   str(scratch / "probes.npy")], capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            row["mapped" if mmap else "copied"] = {k: round(v, 2) for k, v in measured.items()}
        results[kind] = row
        print(kind, row, flush=True)
    report = {"written_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_description(),
              "n": args.n, "dim": int(vectors.shape[1]), "kinds": results}
    lines = [f"# Vector index kinds at {args.n:,} products", "",
             f"Command: `.venv/bin/python benchmarks/bench_index_memory.py --n {args.n} "
             f"--kinds {' '.join(args.kinds)}`  ",
             f"Machine: {report['machine']}  ", f"Written: {report['written_at']}", "",
             f"{args.n:,} vectors of {report['dim']} dimensions: the real fashion embeddings scaled by perturbed "
             "copies (sigma 0.02), sharded by top category, built by `ShardedVectorIndex.build` (recall gate, "
             "ef_search tuned until it passes, ef_construction 160, every shard searched), then loaded in a fresh "
             "process copied and memory-mapped, after 1,000 searches. **Own, mapped** is the anonymous memory "
             "a serving worker pays on its own when the codes are mapped (the service's way: graph, ids, routing); "
             "the rest of its RSS is file pages of the mapped codes, shared by every worker through the page "
             "cache. Latency: one query at a time, one thread, 1,000 probes, mapped.", "",
             "| kind | build | recall@10 | ef_search | file MB | RSS copied MB | RSS mapped MB | own, mapped MB "
             "| p50 | p95 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, r in results.items():
        if "refused" in r:
            lines.append(f"| {kind} | refused by the recall gate: {r['refused']} (estimated {r['estimated_mb']:,} MB) "
                         "| | | | | | | | |")
            continue
        lines.append(f"| {kind} | {r['build_s']} s | {r['recall@10']} | {r['ef_search']} | {r['file_mb']:,} | "
                     f"{r['copied']['after_search_rss_mb']:,.0f} | {r['mapped']['after_search_rss_mb']:,.0f} | "
                     f"{r['mapped']['after_search_anon_mb']:,.0f} | "
                     f"{r['mapped']['p50_ms']} ms | {r['mapped']['p95_ms']} ms |")
    lines += ["", "A 10M-product run was not made on this machine: 10M float32 vectors of this width are "
              f"{10_000_000 * report['dim'] * 4 / 1e9:.0f} GB before any index, and the HNSW build scales with n log n "
              f"(about {results.get('hnsw_sq8', results.get('hnsw', {})).get('build_s', 0) * 10 * 1.2 / 60:.0f} min "
              "extrapolated from this run) on 2 cores and 24 GB. The per-product figures above scale linearly "
              "in memory; `benchmarks/bench_gpu.py` measures the exact 10M scan on a lent GPU."]
    write_report(args.report, lines, report)


if __name__ == "__main__":
    main()
