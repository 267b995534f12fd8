"""Canary rollouts of bad and good challengers: time from the canary's first request to the
rollback, the share of requests the bad challenger served, requests failed during the swaps.
Writes docs/benchmarks/canary.md and .json.

What is real: the routing and control store (SQLite, shared by two serving states that stand for
two workers, each following the routing from its own thread), the per-variant statistics, the
gates, ``deploy_canary`` itself, and the search pipeline over the real Home Depot catalogue
(54,667 titles, BM25 through tantivy, hashed word vectors for the dense side). What is simulated:
the shoppers (real judged Home Depot queries; a shopper clicks the first result judged relevant
with a position-biased probability) and the challengers' faults, injected into the components a
variant is built from: a reranker that raises, a ranker that shuffles the top 10, an index ten
times slower; the good challenger is the champion's components. The offline gate is not part of
this run (no registered versions). The HTTP path with ``skulens serve --workers 2`` is covered by
``tests/integration/test_catalog_ingest.py``.

Usage: python benchmarks/bench_canary.py [--hold-s 15] [--min-requests 100] [--shoppers 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _report import machine_description, write_report

SCENARIOS = {"broken reranker (raises)": {"reranker_version": 66}, "shuffled ranker": {"ranker_version": 77},
             "index ten times slower": {"index_version": "slow"}, "good challenger": {"index_version": "good"}}


class HashedWords:
    """Bag-of-words vectors hashed into 256 dimensions (the dense side; not a trained model)."""

    name = "hashed-words"

    def encode_texts(self, texts):
        out = np.zeros((len(texts), 256), np.float32)
        for row, text in enumerate(texts):
            for word in str(text).lower().split():
                out[row, zlib.crc32(word.encode()) % 256] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    def encode_images(self, sources):
        return self.encode_texts([str(s) for s in sources])


class Slow:
    """A retrieval component whose every search takes ten times as long."""

    def __init__(self, inner):
        self.inner = inner

    def search(self, *args, **kwargs):
        started = time.perf_counter()
        out = self.inner.search(*args, **kwargs)
        time.sleep(9 * (time.perf_counter() - started))
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Shuffled:
    """A ranker that orders the top 10 at random."""

    depth = 10

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def order(self, query, scores, titles, categories):
        return [int(i) for i in self.rng.permutation(len(scores))]


def _broken(query, candidates):
    raise RuntimeError("reranker weights are corrupt")


def _components(shared_root: Path):
    from skulens.data.homedepot import load_homedepot
    from skulens.retrieval.filters import FilterColumns
    from skulens.retrieval.lexical import BM25Index
    from skulens.retrieval.vector_index import ShardedVectorIndex, VectorIndexConfig
    from skulens.serving.spelling import SpellCorrector

    tables, _ = load_homedepot(shared_root / "homedepot" / "judgments.csv")
    products, judgments = tables["products"], tables["judgments"].to_pandas()
    titles = dict(zip(products.column("product_id").to_pylist(), products.column("title").to_pylist(), strict=True))
    encoder = HashedWords()
    ids = list(titles)
    store = ShardedVectorIndex.build(ids, encoder.encode_texts(list(titles.values())), [None] * len(ids),
                                     VectorIndexConfig(kind="flat", min_shard_size=1, gate_queries=10),
                                     columns=FilterColumns.from_products(products))
    relevant = judgments[judgments["grade"] >= 2.33].groupby("query")["product_id"].apply(set).to_dict()
    parts = {"lexical": BM25Index.build(products), "store": store, "encoder": encoder, "titles": titles,
             "spell": SpellCorrector.from_texts(titles.values()),
             "reranker": lambda q, cands: np.array([len(set(q.split()) & set(t.lower().split())) for t in cands],
                                                   dtype=float)}
    return parts, relevant


def _states(settings, parts):
    from skulens.control.routing import VariantSpec
    from skulens.serving.llm.understanding import Vocabulary
    from skulens.serving.loader import Served
    from skulens.serving.metrics import ServingMetrics
    from skulens.serving.pipeline import SearchPipeline
    from skulens.serving.state import ServingState

    def loader(settings, catalog, config, *, index_version=None, reranker_version=None, cascade=None,
               on_batch=None, ranker_version=None):
        chosen = dict(parts)
        if reranker_version == 66:
            chosen["reranker"] = _broken
        if index_version == "slow":
            chosen["lexical"], chosen["store"] = Slow(parts["lexical"]), Slow(parts["store"])
        pipeline = SearchPipeline(**chosen, config=config, ranker=Shuffled() if ranker_version == 77 else None,
                                  versions={"index": index_version or "published"})
        return Served(pipeline, chosen["store"], parts["titles"], {}, {}, Vocabulary.from_products([], []))

    states = []
    for _ in range(2):
        state = ServingState(settings, ServingMetrics.standalone(), loader=loader)
        state.connect()
        state._install("control", state._build("control", VariantSpec("base")), VariantSpec("base"))
        states.append(state)
    return states


def _rollout(settings, states, relevant, challenger, shoppers: int) -> dict:
    from skulens.control.routing import VariantSpec
    from skulens.pipelines import canary
    from skulens.serving.pipeline import SearchRequest

    queries = sorted(relevant)
    stop = threading.Event()
    served = {"ok": 0, "failed": 0}

    def shopper(seed: int) -> None:
        rng = np.random.default_rng(seed)
        n = 0
        while not stop.is_set():
            state = states[n % 2]
            n += 1
            query = queries[int(rng.integers(len(queries)))]
            user = f"shopper{seed}-{int(rng.integers(0, 1000))}"
            try:
                body = state.search(SearchRequest.parse({"text": query, "k": 10, "user_id": user}, state.config))
                served["ok"] += 1
            except Exception:  # noqa: BLE001 - a failed request is what this counts
                served["failed"] += 1
                continue
            for position, item in enumerate(body["items"], start=1):
                if item["product_id"] in relevant[query]:
                    if rng.random() < 0.7 / position ** 0.7:
                        state._click(body["variant"])
                    break

    def follow(state) -> None:
        while not stop.wait(0.2):
            state.sync()

    threads = [threading.Thread(target=shopper, args=(seed,)) for seed in range(shoppers)]
    threads += [threading.Thread(target=follow, args=(state,)) for state in states]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        started = time.perf_counter()
        record = canary.deploy_canary(settings, VariantSpec(**{"index_version": "base", **challenger}), poll_s=0.5,
                                      progress=lambda line: print("  " + line, flush=True))
        record["wall_s"] = round(time.perf_counter() - started, 1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    record["requests_ok"], record["requests_failed"] = served["ok"], served["failed"]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hold-s", type=float, default=15.0)
    parser.add_argument("--min-requests", type=int, default=100)
    parser.add_argument("--shoppers", type=int, default=4)
    parser.add_argument("--only", choices=sorted(SCENARIOS), help="run one scenario (no report written)")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    args = parser.parse_args()
    os.environ.setdefault("SKULENS_PROGRESS", "0")
    from skulens.pipelines import canary
    from skulens.settings import load_settings
    from skulens.storage.layout import index_store

    canary._offline_gate = lambda *a: {"passed": True, "reasons": [], "checks": [], "note": "not run here"}
    canary._set_aliases = lambda settings, versions: None
    canary._alias_before = lambda settings, kind, challenger: None
    print("building the Home Depot pipeline ...", flush=True)
    parts, relevant = _components(args.shared)
    rows = []
    for name, challenger in SCENARIOS.items():
        if args.only and name != args.only:
            continue
        with tempfile.TemporaryDirectory() as home:
            settings = load_settings("local", env={"SKULENS_HOME": home})
            rules = settings.serving.canary.model_copy(update={"hold_s": args.hold_s,
                                                               "min_requests": args.min_requests})
            settings = settings.model_copy(update={"serving": settings.serving.model_copy(update={"canary": rules})})
            store = index_store(settings, settings.retrieval.catalog)
            for version in ("base", "good", "slow"):
                (store.versions / version).mkdir(parents=True)
            store.set_current("base")
            states = _states(settings, parts)
            print(f"{name}:", flush=True)
            record = _rollout(settings, states, relevant, challenger, args.shoppers)
            for state in states:
                state.stop()
            rows.append({"scenario": name, "outcome": record["outcome"], "reason": record["reason"],
                         "steps": len(record["steps"]), "first_request_to_decision_s":
                         record["first_request_to_decision_s"], "canary_share_served": record["canary_share_served"],
                         "canary_requests": record["canary_requests"], "requests_ok": record["requests_ok"],
                         "requests_failed": record["requests_failed"], "wall_s": record["wall_s"],
                         "index_current_after": store.current_id(),
                         "ctr_by_step": [{"share": step["share"], "canary": step["canary"]["ctr"],
                                          "control": step["control"]["ctr"], "canary_requests":
                                          step["canary"]["requests"]} for step in record["steps"]]})
            print(f"  CTR by step: {rows[-1]['ctr_by_step']}", flush=True)
    if args.only:
        return
    command = (f"python benchmarks/bench_canary.py --hold-s {args.hold_s:g} --min-requests {args.min_requests} "
               f"--shoppers {args.shoppers}")
    lines = ["# Canary rollouts (in-process workers, simulated shoppers)", "", f"Command: `{command}`  ",
             f"Machine: {machine_description()}  ", f"Date: {datetime.now(UTC):%Y-%m-%d}", "",
             "Real: routing and control store (SQLite) shared by two serving states standing for two workers, "
             "their statistics, the gates and `deploy_canary`; the search pipeline over the 54,667 real Home "
             "Depot titles (BM25 via tantivy, hashed word vectors). **Simulated**: shoppers (judged Home Depot "
             "queries, a click on the first relevant result with a position-biased probability) and the "
             "challengers' faults. Steps 5/25/50/100%, hold "
             f"{args.hold_s:g} s, at least {args.min_requests} canary requests before a step's gates decide.", "",
             "| challenger | outcome | steps run | first canary request to decision (s) | canary share of requests | "
             "requests failed | reason |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        decided = row["first_request_to_decision_s"]
        lines.append(f"| {row['scenario']} | {row['outcome']} | {row['steps']} | {decided} | "
                     f"{row['canary_share_served']:.1%} | {row['requests_failed']} of "
                     f"{row['requests_failed'] + row['requests_ok']:,} | {row['reason'] or '-'} |")
    lines += ["", "A rolled-back challenger's requests are the only ones it affected (the canary share); "
              "a failed request here is an exception out of a search (a stage that raises is a fallback, "
              "counted by the error gate, not a failed request)."]
    write_report("canary", lines, {"command": command, "machine": machine_description(),
                                   "date": f"{datetime.now(UTC):%Y-%m-%d}", "simulated_shoppers": True, "runs": rows})


if __name__ == "__main__":
    sys.exit(main())
