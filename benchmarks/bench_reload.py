"""Benchmark: reloads under load. `skulens serve` on a SKULENS_HOME, two shoppers searching without
pause (real catalogue titles as queries), and ten `/admin/reload` calls of the control variant
while they search. Counts failed (non-200) and degraded (any fallback, or a short page) responses
during the reloads, against the same count for a quiet period before them.

The budget is widened (10 s, no per-stage timeouts) so that a fallback can only come from the reload
itself, not from two shoppers sharing two cores with the reloading worker: a reload builds a whole
variant (index, encoders, reranker) in the same process.

    .venv/bin/python benchmarks/bench_reload.py [--home var] [--reloads 10]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from _report import machine_description, write_report

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-reload-key"


def main() -> None:
    import httpx
    import pyarrow.parquet as pq

    from skulens.serving.examples import wait_ready
    from skulens.settings import load_settings
    from skulens.storage.layout import index_store

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=None, help="SKULENS_HOME (default: the configured one)")
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--shoppers", type=int, default=2)
    args = parser.parse_args()
    settings = load_settings("local", env={**os.environ, **({"SKULENS_HOME": str(args.home)} if args.home else {})})
    titles = pq.read_table(index_store(settings, settings.retrieval.catalog).current() / "products.parquet",
                           columns=["title"]).column("title").to_pylist()
    rng = random.Random(5)
    queries = [" ".join(t.split()[:3]) for t in rng.sample(titles, 400)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SKULENS_HOME": str(settings.home), "SKULENS_PROGRESS": "0", "SKULENS_ADMIN_KEY": KEY,
           "SKULENS__SERVING__TOTAL_BUDGET_MS": "10000", "SKULENS__SERVING__STAGE_TIMEOUT_MS": "{}",
           "SKULENS__SERVING__WATCH_INDEX_S": "0"}
    server = subprocess.Popen([sys.executable, "-m", "skulens", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout_s=600)
        phase = {"name": "quiet"}
        counts: dict[str, dict[str, int]] = {"quiet": {}, "reloading": {}}
        stop = threading.Event()

        def shopper(n: int) -> None:
            with httpx.Client(base_url=base, timeout=60) as client:
                i = n
                while not stop.is_set():
                    i += args.shoppers
                    response = client.post("/search", json={"text": queries[i % len(queries)], "k": 10})
                    body = response.json() if response.status_code == 200 else {}
                    outcome = ("failed" if response.status_code != 200 else
                               "degraded" if body["fallbacks"] or not body["items"] else "ok")
                    bucket = counts[phase["name"]]
                    bucket[outcome] = bucket.get(outcome, 0) + 1
                    for fallback in body.get("fallbacks", []):
                        bucket[f"fallback:{fallback}"] = bucket.get(f"fallback:{fallback}", 0) + 1

        threads = [threading.Thread(target=shopper, args=(n,)) for n in range(args.shoppers)]
        for thread in threads:
            thread.start()
        time.sleep(20)
        phase["name"] = "reloading"
        reload_s = []
        with httpx.Client(base_url=base, timeout=600, headers={"X-API-Key": KEY}) as admin:
            for _ in range(args.reloads):
                started = time.perf_counter()
                status = admin.post("/admin/reload", json={"variant": "control"}).status_code
                reload_s.append(round(time.perf_counter() - started, 2))
                assert status == 200, status
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    report = {"written_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_description(),
              "reloads": args.reloads, "shoppers": args.shoppers, "reload_seconds": reload_s, "responses": counts}
    during = counts["reloading"]
    lines = ["# Reloads under load", "",
             f"Command: `.venv/bin/python benchmarks/bench_reload.py --reloads {args.reloads}"
             f"{f' --home {args.home}' if args.home else ''}`  ",
             f"Machine: {report['machine']}  ", f"Written: {report['written_at']}", "",
             f"`skulens serve` on the published {settings.retrieval.catalog} index, {args.shoppers} shoppers searching "
             f"without pause (catalogue titles as queries), {args.reloads} `/admin/reload` calls of the control "
             "variant while they search (each builds a whole new variant, then swaps it in; the old one drains). "
             "Stage timeouts widened so that only the reload can degrade a response.", "",
             "| phase | ok | degraded | failed |", "|---|---:|---:|---:|"]
    for name, bucket in counts.items():
        lines.append(f"| {name} | {bucket.get('ok', 0)} | {bucket.get('degraded', 0)} | {bucket.get('failed', 0)} |")
    lines += ["", f"Reload times (s): {reload_s}.", "",
              f"During the reloads: {during.get('failed', 0)} failed and {during.get('degraded', 0)} degraded of "
              f"{sum(v for k, v in during.items() if ':' not in k)} responses.", ""]
    write_report("reload", lines, report)


if __name__ == "__main__":
    main()
