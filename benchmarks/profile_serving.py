"""Profile: where a search's CPU time goes in `skulens serve` under load.

Starts the real service (BentoML, loopback) on a SKULENS_HOME, drives text searches with
``--concurrency`` in flight for ``--seconds``, and samples every process of the service with
py-spy (``--subprocesses``, active threads only, 200 Hz) at the same time. Samples are put in
buckets by the innermost skulens or library frame they pass through (ONNX text encoder, FAISS,
tantivy, cross-encoder, spelling, HTTP server, ...), so the table shows the share of the service's
busy CPU time each part takes. The stage timings the responses report (``stages[].ms``) and the
share of responses that carried a fallback are printed beside it.

``--src DIR`` serves another checkout's code (for example the commit before a change: ``git
worktree add /tmp/base <commit>``) with this checkout's environment, to measure before and after.

    .venv/bin/python benchmarks/profile_serving.py [--size bundled|N] [--concurrency 8] [--seconds 20]
        [--rerank] [--workers 1] [--src DIR] [--report serving_profile]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _report import machine_description, write_report
from bench_serving import ADMIN_KEY, queries, scaled_home

ROOT = Path(__file__).resolve().parents[1]
IDLE = "idle (threads waiting on a future, a queue or a condition)"

# (bucket, substrings of a py-spy frame "function (file:line)"), checked innermost frame first.
BUCKETS = [
    ("query encoder (ONNX text tower)", ["encode_texts (", "tokenize"]),
    ("photo encoder", ["encode_images ("]),
    ("cross-encoder rerank", ["reranker.py", "_rerank ("]),
    ("FAISS dense search", ["vector_index.py", "live.py"]),
    ("BM25 (tantivy)", ["lexical.py"]),
    ("spelling correction", ["spelling.py", "symspell"]),
    ("query understanding (rules tier, cache)", ["cascade.py", "tiers.py", "understanding.py"]),
    ("local LLM tier", ["transformers/", "torch/"]),
    ("near-duplicate collapse", ["collapse_near_duplicates"]),
    ("fusion, rules, page", ["ranking.py", "fusion.py", "rules.py"]),
    ("pipeline bookkeeping (stages, results)", ["pipeline.py"]),
    ("batching threads", ["batching.py"]),
    ("request parsing and validation", ["app.py", "schemas.py", "filters.py", "images.py"]),
    ("response (state, photos, JSON)", ["state.py", "json/", "responses.py"]),
    ("metrics", ["prometheus_client", "metrics.py"]),
    ("HTTP server (uvicorn, starlette, BentoML)", ["uvicorn", "starlette", "fastapi", "bentoml", "h11", "httptools",
                                                   "anyio", "asyncio", "_bentoml"]),
    ("thread hand-offs (pool, futures, locks)", ["concurrent/futures", "threading.py", "queue.py"]),
]


# Innermost frames of a thread that waits (py-spy's own idle test does not catch these waits here):
# futures and conditions, idle pool workers, a batch thread waiting for work.
IDLE_LEAVES = ("wait (threading.py", "_worker (", "_loop (", "get (queue.py", "select (selectors.py")


def bucket_of(stack: list[str]) -> str:
    if any(needle in stack[-1] for needle in IDLE_LEAVES):
        return IDLE
    if stack[-1].startswith("run (asyncio/runners.py") or "Runner.run (" in stack[-1]:
        return "event loop (uvloop's C code: socket I/O, and its idle waits)"
    for frame in reversed(stack):  # innermost first
        for name, needles in BUCKETS:
            if any(n in frame for n in needles):
                return name
    return "other (interpreter, C extensions without a Python frame)"


def start(home: Path, port: int, src: Path, workers: int) -> subprocess.Popen:
    env = {**os.environ, "SKULENS_HOME": str(home), "SKULENS_PROGRESS": "0", "SKULENS_ADMIN_KEY": ADMIN_KEY,
           "PYTHONPATH": str(src / "src")}
    if workers != 1:  # code before serving.workers existed refuses the unknown setting
        env["SKULENS__SERVING__WORKERS"] = str(workers)
    return subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:SearchService", "--host",
                             "127.0.0.1", "--port", str(port), "--working-dir", str(src)], cwd=src, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


async def drive(base: str, bodies: list[dict], seconds: float, concurrency: int) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: Counter = Counter()
    stage_ms: dict[str, list[float]] = defaultdict(list)
    fallbacks: Counter = Counter()
    degraded = answered = 0
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal degraded, answered
        while time.perf_counter() < deadline:
            body = bodies[next(counter) % len(bodies)]
            started = time.perf_counter()
            response = await client.post("/search", json=body)
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                data = response.json()
                answered += 1
                degraded += bool(data["fallbacks"])
                fallbacks.update(data["fallbacks"])
                for stage in data["stages"]:
                    stage_ms[stage["name"]].append(stage["ms"])

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=concurrency)) as c:
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    lat = np.array(latencies)
    return {"requests": len(lat), "qps": round(len(lat) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "statuses": dict(statuses), "degraded_share": round(degraded / answered, 3) if answered else None,
            "fallbacks": dict(fallbacks),
            "stages": {name: {"mean_ms": round(float(np.mean(v)), 2), "p95_ms": round(float(np.percentile(v, 95)), 2)}
                       for name, v in stage_ms.items()}}


def collapse(raw: Path) -> dict[str, int]:
    """py-spy's raw output (one ``frame;frame;... count`` per line) summed per bucket."""
    counts: Counter = Counter()
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[bucket_of(stack.split(";"))] += int(count)
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="bundled")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rerank", action="store_true", help="searches ask for the cross-encoder rerank")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--src", type=Path, default=ROOT, help="checkout whose code is served")
    parser.add_argument("--label", default=None, help="what this run profiles (default: the commit of --src)")
    parser.add_argument("--report", default="serving_profile")
    args = parser.parse_args()
    from skulens.serving.examples import wait_llm, wait_ready
    from skulens.settings import load_settings

    settings = load_settings("local")
    home = settings.home if args.size == "bundled" else scaled_home(int(args.size))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.src, capture_output=True,
                            text=True).stdout.strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = start(home, port, args.src.resolve(), args.workers)
    raw = ROOT / "var" / "bench" / f"py-spy-{args.report}.txt"
    raw.parent.mkdir(parents=True, exist_ok=True)
    try:
        wait_ready(base, timeout_s=900, alive=lambda: server.poll() is None)
        wait_llm(base, ADMIN_KEY, timeout_s=600, workers=args.workers)
        texts = queries(home, 3000)
        bodies = [{"text": q, "k": 10, "rerank": args.rerank} for q in texts]
        asyncio.run(drive(base, [{"text": q, "k": 10} for q in texts[-60:]], 5, 2))  # warm
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(server.pid), "--subprocesses", "--rate", "200",
                                "--duration", str(int(args.seconds)), "--format", "raw", "--output", str(raw),
                                "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
        time.sleep(1)
        load = asyncio.run(drive(base, random.Random(0).sample(bodies, len(bodies)), args.seconds, args.concurrency))
        spy.wait(timeout=120)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    buckets = collapse(raw)
    idle = buckets.pop(IDLE, 0)
    total = sum(buckets.values()) or 1
    label = args.label or f"commit {commit}"
    report = {"written_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_description(),
              "size": args.size, "concurrency": args.concurrency, "seconds": args.seconds, "rerank": args.rerank,
              "workers": args.workers, "served_code": label, "load": load,
              "samples": buckets, "idle_samples": idle, "share": {k: round(v / total, 3) for k, v in buckets.items()}}
    cmd = (f"`.venv/bin/python benchmarks/profile_serving.py --size {args.size} --concurrency {args.concurrency} "
           f"--seconds {args.seconds:g}{' --rerank' if args.rerank else ''} --workers {args.workers}"
           f"{' --src ' + str(args.src) if args.src != ROOT else ''} --report {args.report}`")
    lines = [f"# Where a search's time goes: {label}, {args.size} products, {args.concurrency} in flight", "",
             f"Command: {cmd}  ", f"Machine: {report['machine']}  ", f"Written: {report['written_at']}", "",
             f"`skulens serve` ({args.workers} worker(s)) on loopback; text searches"
             f"{' with' if args.rerank else ' without'} rerank, attribute-derived queries, {args.concurrency} in "
             "flight from an asyncio client on the same 2 cores. Samples from py-spy (200 Hz) of every thread of "
             "every service process, bucketed by the innermost frame of a known part. A sample is a thread that is "
             "working: running, or runnable and waiting for a core or for the GIL (so a part's share is its share "
             "of the contention, not only of the CPU); samples of threads idle in a known wait "
             f"({idle:,} here) are left out. Native threads without a Python frame (ONNX Runtime's and FAISS's "
             "own pools) are not sampled: their work shows in the calling thread.", "",
             f"Load: {load['requests']} requests, {load['qps']} QPS, p50 {load['p50_ms']} ms, p95 {load['p95_ms']} ms, "
             f"statuses {load['statuses']}, degraded share {load['degraded_share']}, fallbacks {load['fallbacks']}", "",
             "| part | samples | share of working samples |", "|---|---:|---:|"]
    for name, count in sorted(buckets.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {count} | {count / total:.1%} |")
    lines += ["", "Stage times reported by the responses under this load:", "",
              "| stage | mean | p95 |", "|---|---:|---:|"]
    for name, s in load["stages"].items():
        lines.append(f"| {name} | {s['mean_ms']} ms | {s['p95_ms']} ms |")
    write_report(args.report, lines, report)


if __name__ == "__main__":
    main()
