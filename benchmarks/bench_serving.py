"""Benchmark: `skulens serve` (BentoML, loopback) under load, at the bundled catalogue size and at
1M products.

For each size the script starts the real service (`skulens serve`) on a SKULENS_HOME and drives it
with an asyncio httpx client, time-bounded per scenario:

* single stream (one request at a time): p50/p95/p99 and QPS per endpoint: text search with and
  without the cross-encoder rerank, photo search, similar products, session recommendations;
* concurrent (``--concurrency`` requests in flight): QPS and latency of text search with and
  without rerank, and the share of responses that carried a fallback (a stage late under load).

The bundled size serves the published fashion index (42,874 products). 1M products is the same
catalogue **scaled by perturbation** (as docs/benchmarks/vector_libs.md): each copy of a product
keeps its title, category and photo and gets the product's real vector plus Gaussian noise
(sigma 0.02, renormalised); the copies are indexed by the same code (`ShardedVectorIndex.build`
with the recall gate, `BM25Index.build`) into a scratch SKULENS_HOME that shares the registry with
the dev home (graph built with ef_construction 160 and every shard searched: with the configured
80 and top-3 routing the 1M index missed the recall gate, 0.9496 < 0.95). Queries are
**attribute-derived** ("<colour> <article type>", "<gender> <usage> <article type>", ...), not
real shopper queries; each query is used once per scenario where
possible so the query-vector cache does not flatter the figures (its hit rate is reported).

    .venv/bin/python benchmarks/bench_serving.py [--sizes bundled 1000000] [--seconds 20] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _report import machine_description, write_report

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "bench-admin-key"


def scaled_home(n: int, sigma: float = 0.02) -> Path:
    """A scratch SKULENS_HOME whose published fashion index holds ``n`` products (see the docstring)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from skulens.pipelines.build_index import index_store
    from skulens.retrieval.embed import read_embeddings
    from skulens.retrieval.filters import FilterColumns
    from skulens.retrieval.lexical import BM25Index, LexicalConfig
    from skulens.retrieval.vector_index import ShardedVectorIndex, VectorIndexConfig
    from skulens.settings import load_settings

    settings = load_settings("local")
    current = index_store(settings, "fashion").current()
    if current is None:
        raise SystemExit("no published fashion index: run `make demo` first")
    home = settings.home / "bench" / f"home-{n}"
    version = home / "indexes" / "fashion" / "versions" / f"scaled-{n}"
    if (version / "manifest.json").is_file():
        return home
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    for shared in ("mlflow", "cache", "tables", "events"):
        if (settings.home / shared).exists():
            (home / shared).symlink_to((settings.home / shared).resolve())
    products = pq.read_table(current / "products.parquet")
    ids, vectors, keys = read_embeddings(current / "embeddings.parquet")
    position = {pid: i for i, pid in enumerate(products.column("product_id").to_pylist())}
    products = products.take(pa.array([position[p] for p in ids], pa.int64()))
    base = len(ids)
    copies = -(-n // base)
    rng = np.random.default_rng(0)
    rows = np.tile(np.arange(base), copies)[:n]
    copy = np.repeat(np.arange(copies), base)[:n]
    print(f"scaling {base:,} products to {n:,} (perturbed copies)", flush=True)
    big_vectors = vectors[rows].astype(np.float32)
    noisy = copy > 0
    big_vectors[noisy] += rng.normal(0, sigma, (int(noisy.sum()), vectors.shape[1])).astype(np.float32)
    big_vectors /= np.linalg.norm(big_vectors, axis=1, keepdims=True)
    big_ids = [ids[r] if c == 0 else f"{ids[r]}~{c}" for r, c in zip(rows, copy, strict=True)]
    big = products.take(pa.array(rows, pa.int64()))
    big = big.set_column(big.schema.get_field_index("product_id"), big.schema.field("product_id"),
                         pa.array(big_ids, pa.string()))
    big_keys = [keys[r] for r in rows]
    version.mkdir(parents=True)
    pq.write_table(big, version / "products.parquet")
    started = time.perf_counter()
    # At 1M the configured graph (ef_construction 80, top-3 shard routing) fell just short of the
    # recall gate (0.9496 < 0.95); a denser graph and every shard searched pass it.
    config = VectorIndexConfig(**{**settings.retrieval.vector.model_dump(), "ef_construction": 160,
                                  "route_top_n": 8})
    index = ShardedVectorIndex.build(big_ids, big_vectors, big_keys, config, model_version="skulens-embedder/1",
                                     columns=FilterColumns.from_products(big))
    index.save(version / "vector")
    print(f"vector index: {time.perf_counter() - started:.0f} s, recall@10 {index.manifest['recall@10']}", flush=True)
    started = time.perf_counter()
    BM25Index.build(big, LexicalConfig.from_settings(settings.retrieval), folder=version / "lexical")
    print(f"lexical index: {time.perf_counter() - started:.0f} s", flush=True)
    del pc
    (version / "manifest.json").write_text(json.dumps({
        "version": version.name, "catalog": "fashion", "model_version": "skulens-embedder/1", "updates_through": 0,
        "scaled_from": current.name, "sigma": sigma}, indent=2), encoding="utf-8")
    (home / "indexes" / "fashion" / "CURRENT").write_text(version.name, encoding="utf-8")
    return home


def queries(home: Path, count: int, seed: int = 0) -> list[str]:
    """Distinct attribute-derived queries from the indexed products."""
    import pyarrow.parquet as pq

    from skulens.storage import VersionedDir

    current = VersionedDir(home / "indexes" / "fashion").current()
    rows = pq.read_table(current / "products.parquet", columns=["attributes"]).slice(0, 50_000).to_pylist()
    rng = random.Random(seed)
    out: set[str] = set()
    shapes = (("colour", "article_type"), ("gender", "colour", "article_type"), ("usage", "article_type"),
              ("gender", "season", "article_type"), ("colour", "usage", "article_type"))
    for _ in range(count * 50):
        if len(out) >= count:
            break
        attrs = dict(rng.choice(rows)["attributes"] or [])
        shape = rng.choice(shapes)
        words = [attrs.get(name) for name in shape]
        if all(words):
            out.add(" ".join(words).lower())
    return rng.sample(sorted(out), len(out))


def photos(home: Path, count: int) -> list[str]:
    import pyarrow.parquet as pq

    from skulens.storage import VersionedDir

    current = VersionedDir(home / "indexes" / "fashion").current()
    uris = [u for u in pq.read_table(current / "products.parquet", columns=["image_uri"]).column("image_uri")
            .to_pylist()[:50_000] if u]
    return [base64.b64encode(Path(u).read_bytes()).decode() for u in random.Random(1).sample(uris, count)]


def start(home: Path, port: int, env_extra: dict[str, str] | None = None, workers: int = 1) -> subprocess.Popen:
    env = {**os.environ, "SKULENS_HOME": str(home), "SKULENS_PROGRESS": "0", "SKULENS_ADMIN_KEY": ADMIN_KEY,
           **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "skulens", "serve", "--port", str(port), "--workers", str(workers)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def memory_mb(root_pid: int) -> dict:
    """RSS and PSS (proportional: pages shared by several processes, such as the memory-mapped index,
    are split between them) of the service's processes, in MB."""
    pids = [root_pid]
    for pid in pids:  # grows while walking: children of children
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        pids += [int(c) for c in children]
    out = {"processes": 0, "rss_mb": 0.0, "pss_mb": 0.0, "largest_rss_mb": 0.0}
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:] if line.split()[-1] == "kB"}
        rss = fields.get("Rss", 0) / 1024
        out["processes"] += 1
        out["rss_mb"] += rss
        out["pss_mb"] += fields.get("Pss", 0) / 1024
        out["largest_rss_mb"] = max(out["largest_rss_mb"], rss)
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


async def drive(base: str, bodies: list[tuple[str, dict]], seconds: float, concurrency: int) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    fallbacks = cache_hits = answered = 0
    stage_fallbacks: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal fallbacks, cache_hits, answered
        while time.perf_counter() < deadline:
            path, body = bodies[next(counter) % len(bodies)]
            started = time.perf_counter()
            response = await client.post(path, json=body)
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 200 and path == "/search":
                data = response.json()
                answered += 1
                fallbacks += bool(data["fallbacks"])
                for name in data["fallbacks"]:
                    stage_fallbacks[name] = stage_fallbacks.get(name, 0) + 1
                cache_hits += data.get("cache", {}).get("query_vector") == "hit"

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=concurrency)) as c:
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    lat = np.array(latencies)
    return {"requests": len(lat), "qps": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "statuses": statuses, "fallback_rate": round(fallbacks / answered, 3) if answered else None,
            "refused_share": round(statuses.get(503, 0) / len(lat), 3) if len(lat) else None,
            "fallbacks": stage_fallbacks,
            "query_vector_cache_hit_rate": round(cache_hits / answered, 3) if answered else None}


def run_size(label: str, home: Path, args: argparse.Namespace, workers: int) -> dict:
    import httpx

    from skulens.serving.examples import wait_llm, wait_ready

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    overrides = dict(item.split("=", 1) for item in args.set)
    server = start(home, port, {f"SKULENS__{k.upper().replace('.', '__')}": v for k, v in overrides.items()},
                   workers=workers)
    try:
        started = time.perf_counter()
        ready_s = wait_ready(base, timeout_s=600, alive=lambda: server.poll() is None)
        # Measure once the local LLM tier has loaded (a background thread that takes the CPU for
        # about 25 s after readiness): the figures are for a warm service.
        wait_llm(base, ADMIN_KEY, timeout_s=600, workers=workers)
        warm_s = time.perf_counter() - started
        texts = queries(home, 4000)
        images = photos(home, 200)
        ids = [item["product_id"] for q in texts[-40:]
               for item in httpx.post(base + "/search", json={"text": q, "k": 5, "rerank": False},
                                      timeout=60).json()["items"]]
        warm = [("/search", {"text": q, "k": 10}) for q in texts[-50:]]
        asyncio.run(drive(base, warm, 5, 1))
        rng = random.Random(2)
        scenarios = {
            "search text + rerank": [("/search", {"text": q, "k": 10}) for q in texts[0::4]],
            "search text, no rerank": [("/search", {"text": q, "k": 10, "rerank": False}) for q in texts[1::4]],
            "search photo": [("/search", {"image_base64": b, "k": 10}) for b in images],
            "recommend similar": [("/recommend/similar", {"product_id": p, "k": 10}) for p in ids],
            "recommend session": [("/recommend/session", {"product_ids": rng.sample(ids, 3), "k": 10})
                                  for _ in range(300)],
        }
        results = {"ready_s": round(ready_s, 1), "warm_s": round(warm_s, 1), "single_stream": {}, "concurrent": {},
                   "memory_idle": memory_mb(server.pid)}
        for name, bodies in scenarios.items() if not args.skip_single else ():
            results["single_stream"][name] = asyncio.run(drive(base, bodies, args.seconds, 1))
            print(label, "single", name, results["single_stream"][name], flush=True)
        concurrent = {"search text + rerank": [("/search", {"text": q, "k": 10}) for q in texts[2::4]],
                      "search text, no rerank": [("/search", {"text": q, "k": 10, "rerank": False})
                                                 for q in texts[3::4]]}
        for name, bodies in concurrent.items():
            for level in args.concurrency:
                key = f"{name}, {level} in flight"
                results["concurrent"][key] = asyncio.run(drive(base, bodies, args.seconds, level))
                print(label, key, results["concurrent"][key], flush=True)
        results["memory_loaded"] = memory_mb(server.pid)
        return results
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["bundled", "1000000"])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8])
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="skulens serve --workers (several: one run per count, e.g. 1 2 4)")
    parser.add_argument("--skip-single", action="store_true", help="only the concurrent scenarios")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="service settings, e.g. serving.onnx_threads=1 (SKULENS__SERVING__ONNX_THREADS)")
    parser.add_argument("--report", default="serving", help="docs/benchmarks/<report>.md")
    args = parser.parse_args()
    from skulens.settings import load_settings

    settings = load_settings("local")
    report: dict = {"written_at": None, "machine": machine_description(), "seconds": args.seconds,
                    "concurrency": args.concurrency, "workers": args.workers, "sizes": {}}
    for size in args.sizes:
        home = settings.home if size == "bundled" else scaled_home(int(size))
        for workers in args.workers:
            label = size if len(args.workers) == 1 else f"{size}, {workers} worker{'s' * (workers > 1)}"
            report["sizes"][label] = {**run_size(label, home, args, workers), "size": size,
                                     "workers": workers}
    report["written_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    extra = f" --report {args.report}" if args.report != "serving" else ""
    levels = " ".join(str(c) for c in args.concurrency)
    counts = " ".join(str(w) for w in args.workers)
    admission = settings.serving.admission
    lines = ["# Search service under load", "",
             f"Command: `.venv/bin/python benchmarks/bench_serving.py --sizes {' '.join(args.sizes)} --seconds "
             f"{args.seconds:g} --concurrency {levels} --workers {counts}"
             f"{' --set ' + ' '.join(args.set) if args.set else ''}"
             f"{' --skip-single' if args.skip_single else ''}{extra}`  ",
             f"Machine: {report['machine']}  ", f"Written: {report['written_at']}", "",
             f"`skulens serve --workers {counts}` (BentoML) on loopback, driven by an asyncio httpx client on "
             "the same 2 cores. Queries are attribute-derived, not real shopper queries; 1M = the fashion catalogue "
             "scaled by perturbed copies (see the script's docstring). Budget: 150 ms in all, per-stage timeouts; "
             "the cross-encoder reranks as deep as the index version's learned ranking policy says (each distinct "
             "title once). Query encodings and reranker pairs of concurrent searches are batched; admission control "
             f"runs {admission.max_active} searches at once per worker and queues {admission.max_waiting} "
             f"(at most {admission.max_wait_ms:g} ms), refusing the rest with 503. **degraded** = share of answered "
             "searches that carried any fallback; **503** = share of requests refused by admission control.", ""]
    for res in report["sizes"].values():
        lines += [f"## {res['size']} products, {res['workers']} worker(s) (ready in {res['ready_s']} s, "
                  f"local LLM tier loaded at {res['warm_s']} s)",
                  "",
                  "| endpoint | requests | QPS | p50 | p95 | p99 | degraded | 503 | vector cache hits |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows = [(f"{name}, single stream", r) for name, r in res["single_stream"].items()]
        rows += list(res["concurrent"].items())
        for name, r in rows:
            fallback, hits = r["fallback_rate"], r["query_vector_cache_hit_rate"]
            lines.append(f"| {name} | {r['requests']} | {r['qps']} | {r['p50_ms']} ms | {r['p95_ms']} ms | "
                         f"{r['p99_ms']} ms | {'-' if fallback is None else fallback} | "
                         f"{r.get('refused_share', '-')} | {'-' if hits is None else hits} |")
        for when in ("memory_idle", "memory_loaded"):
            m = res.get(when)
            if m:
                lines.append(f"\n{when.replace('_', ' ')}: {m['processes']} processes, RSS {m['rss_mb']:,} MB, "
                             f"PSS {m['pss_mb']:,} MB (shared pages split), largest process RSS "
                             f"{m['largest_rss_mb']:,} MB")
        lines.append("")
    write_report(args.report, lines, report)


if __name__ == "__main__":
    main()
