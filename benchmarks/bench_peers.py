"""Peers side by side, in one run: the same corpus and the same held-out real queries through

* **skulens as served**: `skulens serve` (BentoML) on loopback over the published Home Depot index,
  one HTTP request per query (``k`` = 100), with and without the cross-encoder rerank;
* **LanceDB** hybrid search: its full-text index + the packaged all-MiniLM-L6-v2 title vectors,
  merged by its default reciprocal-rank fusion (what its documentation shows);
* **Lucene BM25 through pyserini** 0.22.1 (Anserini 0.22, the last line that runs on Java 17;
  newer releases need Java 21), default BM25 (k1 0.9, b 0.4);
* **bm25s**: plain BM25 over the titles, the baseline the relevance issue names.

Corpus: the products of the served index version (``SKULENS_HOME/indexes/homedepot``); queries: a
seeded sample of the Home Depot judgments' test-split queries (never used for training or for
learning the ranking policy), graded 0-6, relevant = grade >= 4 as in ``skulens eval``. Each peer
runs in a child process of its own so that its peak memory (max RSS) is its own; the query vector
is computed inside each timed search (a shopper's query arrives as text). Every peer's p50/p95 is
single stream on the same 2 cores.

    .venv/bin/python benchmarks/bench_peers.py                   # 500 queries, all peers
    .venv/bin/python benchmarks/bench_peers.py --queries 200 --skip pyserini

pyserini is not a dependency of skulens (it bundles a 140 MB Lucene jar); the script looks for it
on ``--pyserini-path`` (a folder with pyserini 0.22.1 and pyjnius, e.g. made by
``pip install --no-deps --target /tmp/pys/lib pyserini==0.22.1 pyjnius``) and reports it as not run
when it is missing. LanceDB is not a dependency either: the script looks for it on ``--lancedb-path``
(made by ``pip install --no-deps --target /tmp/lance lancedb==0.40.0 deprecation overrides
lance-namespace lance-namespace-urllib3-client``: ``--no-deps`` so that it cannot replace the
project's numpy or pyarrow), else in the environment. A peer that fails says why in the report
(the last lines of its error).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import machine_description, write_report

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("skulens", "skulens_no_rerank", "lancedb_hybrid", "pyserini_bm25", "bm25s")


# -- inputs -------------------------------------------------------------------------------------
def served_version(home: Path) -> Path:
    from skulens.retrieval.live import LiveIndex  # noqa: F401 - the index layout's owner
    from skulens.settings import load_settings
    from skulens.storage.layout import index_store

    settings = load_settings()
    current = index_store(settings, "homedepot").current()
    if current is None:
        raise SystemExit(f"no published homedepot index under {home}; run the main job first (README)")
    return Path(current)


def held_out_queries(count: int, seed: int, split: str = "test") -> tuple[dict[str, dict[str, int]], list[str]]:
    """Graded qrels of ``count`` queries of ``split`` (seeded sample) and the sampled query texts."""
    from skulens.evaluation.rerankers import grade_to_rel
    from skulens.settings import load_settings
    from skulens.storage.layout import pairs_dir
    from skulens.training.reranker import judged_pairs, product_titles

    settings = load_settings()
    qrels: dict[str, dict[str, int]] = {}
    for q, p, _, g in judged_pairs(pairs_dir(settings), product_titles(settings), split):
        qrels.setdefault(q, {})[p] = grade_to_rel(g)
    useful = sorted(q for q, docs in qrels.items() if any(r >= 1 for r in docs.values()))
    texts = sorted(random.Random(seed).sample(useful, min(count, len(useful))))
    return {q: qrels[q] for q in texts}, texts


# -- peers (each in its own child process) --------------------------------------------------------
def _timed(search, texts: list[str]) -> tuple[dict[str, list[str]], list[float]]:
    runs, ms = {}, []
    for text in texts:
        started = time.perf_counter()
        runs[text] = search(text)
        ms.append((time.perf_counter() - started) * 1000)
    return runs, ms


def _corpus(version: Path) -> tuple[list[str], list[str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(version / "products.parquet", columns=["product_id", "title"])
    return table.column("product_id").to_pylist(), table.column("title").to_pylist()


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def minilm_title_vectors(version: Path, ids: list[str], titles: list[str]) -> np.ndarray:
    """The packaged MiniLM vectors of the corpus titles, cached beside the benchmark's scratch."""
    from skulens.retrieval.encoders import make_encoder

    cache = Path(os.environ.get("SKULENS_HOME", ROOT / "var")) / "cache" / "peers" / f"{version.name}-minilm.npy"
    if cache.is_file():
        return np.load(cache)
    vectors = make_encoder("minilm").encode_texts(titles)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def peer_skulens(version: Path, texts: list[str], port: int, rerank: bool) -> dict:
    """The real service over HTTP; build time is what the main job's build_index stages recorded.
    Quality: the held-out texts at k = 100 (cold: no query was searched before). Page latency: other
    held-out queries (validation split, so the service's query-vector cache has not seen them) at
    k = 10, the size of a results page. Also how often the dense and rerank stages ran in time."""
    import httpx

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_serving import memory_mb, start

    home = Path(os.environ.get("SKULENS_HOME", ROOT / "var"))
    proc = start(home, port, {"SKULENS__RETRIEVAL__CATALOG": "homedepot"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            raise RuntimeError("skulens serve did not become ready in 10 minutes")
        stages: dict[str, dict[str, int]] = {}
        with httpx.Client(timeout=30) as client:
            def search(text: str, k: int = 100) -> list[str]:
                response = client.post(base + "/search", json={"text": text, "k": k, "rerank": rerank})
                response.raise_for_status()
                for part in response.json()["stages"]:
                    counts = stages.setdefault(part["name"], {})
                    counts[part["status"]] = counts.get(part["status"], 0) + 1
                return [item["product_id"] for item in response.json()["items"]]

            for text in texts[:20]:  # warm-up (other strings: the vector cache must not hold the queries)
                client.post(base + "/search", json={"text": text + " warmup", "k": 100, "rerank": rerank})
            runs, ms = _timed(search, texts)
            quality_stages, stages = stages, {}
            _, page_texts = held_out_queries(len(texts), 1, split="val")
            _, page_ms = _timed(lambda text: search(text, k=10), page_texts)
            memory = memory_mb(proc.pid)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
    manifest = json.loads((version / "manifest.json").read_text(encoding="utf-8"))
    build_s = manifest["embed"]["seconds"] + manifest["vector"]["build_s"] + manifest["lexical"]["build_s"]
    return {"runs": runs, "ms": ms, "build_s": round(build_s, 1), "index_bytes": _du(version),
            "page_k10_ms": {"p50": round(float(np.percentile(page_ms, 50)), 1),
                            "p95": round(float(np.percentile(page_ms, 95)), 1), "queries": len(page_ms)},
            "stages_k100": quality_stages, "stages_k10": stages,
            "memory": {"service_rss_mb": memory["rss_mb"], "service_pss_mb": memory["pss_mb"]},
            "notes": "build time = the published version's embed + vector + lexical stages (manifest.json); "
                     "embedding 45k titles on 2 CPU cores is most of it"}


def peer_lancedb(version: Path, texts: list[str]) -> dict:
    import lancedb
    import pyarrow as pa

    from skulens.retrieval.encoders import make_encoder

    ids, titles = _corpus(version)
    vectors = minilm_title_vectors(version, ids, titles)
    encoder = make_encoder("minilm")
    folder = Path(tempfile.mkdtemp(prefix="skulens-peers-lancedb-"))
    try:
        started = time.perf_counter()
        table = lancedb.connect(str(folder)).create_table("products", data=pa.table(
            {"id": ids, "text": titles,
             "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])}))
        table.create_fts_index("text")
        build_s = time.perf_counter() - started

        def search(text: str) -> list[str]:
            vector = encoder.encode_texts([text])[0]
            rows = table.search(query_type="hybrid").vector(vector).text(text).limit(100).select(["id"]).to_list()
            return [row["id"] for row in rows]

        runs, ms = _timed(search, texts)
        size = _du(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"runs": runs, "ms": ms, "build_s": round(build_s, 1), "index_bytes": size,
            "notes": f"lancedb {lancedb.__version__}; build time excludes embedding the titles (cached MiniLM "
                     "vectors, the same as the evaluation's dense side)"}


def peer_pyserini(version: Path, texts: list[str]) -> dict:
    from pyserini.search.lucene import LuceneSearcher

    ids, titles = _corpus(version)
    folder = Path(tempfile.mkdtemp(prefix="skulens-peers-lucene-"))
    try:
        (folder / "docs").mkdir()
        with open(folder / "docs" / "corpus.jsonl", "w", encoding="utf-8") as out:
            for pid, title in zip(ids, titles, strict=True):
                out.write(json.dumps({"id": pid, "contents": title}) + "\n")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pyserini.index.lucene", "--collection", "JsonCollection",
                        "--input", str(folder / "docs"), "--index", str(folder / "index"), "--generator",
                        "DefaultLuceneDocumentGenerator", "--threads", "2"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        build_s = time.perf_counter() - started
        searcher = LuceneSearcher(str(folder / "index"))
        runs, ms = _timed(lambda text: [hit.docid for hit in searcher.search(text, k=100)], texts)
        size = _du(folder / "index")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"runs": runs, "ms": ms, "build_s": round(build_s, 1), "index_bytes": size,
            "notes": "pyserini 0.22.1 (Anserini 0.22, Lucene 9) on Java 17, BM25 k1 0.9 b 0.4; the indexer's JVM "
                     "memory is not in the max RSS"}


def peer_bm25s(version: Path, texts: list[str]) -> dict:
    import bm25s

    ids, titles = _corpus(version)
    started = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(titles, stopwords="en", show_progress=False), show_progress=False)
    build_s = time.perf_counter() - started

    def search(text: str) -> list[str]:
        tokens = bm25s.tokenize([text], stopwords="en", show_progress=False)
        if not len(tokens.vocab):
            return []
        docs, _ = retriever.retrieve(tokens, k=100, show_progress=False)
        return [ids[int(i)] for i in docs[0]]

    runs, ms = _timed(search, texts)
    return {"runs": runs, "ms": ms, "build_s": round(build_s, 1), "index_bytes": None,
            "notes": f"bm25s {bm25s.__version__}, in memory"}


def run_worker(args: argparse.Namespace) -> None:
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    version = Path(args.version)
    if args.worker == "skulens":
        out = peer_skulens(version, texts, args.port, rerank=True)
    elif args.worker == "skulens_no_rerank":
        out = peer_skulens(version, texts, args.port, rerank=False)
    elif args.worker == "lancedb_hybrid":
        out = peer_lancedb(version, texts)
    elif args.worker == "pyserini_bm25":
        out = peer_pyserini(version, texts)
    else:
        out = peer_bm25s(version, texts)
    Path(args.out).write_text(json.dumps(out), encoding="utf-8")


def run_peer(name: str, version: Path, texts_file: Path, port: int, paths: dict[str, str | None]) -> dict:
    """One peer in a child process; its max RSS comes back from wait4. ``paths``: an extra import
    folder per peer (pyserini's, LanceDB's)."""
    out = texts_file.with_name(f"{name}.json")
    errors = texts_file.with_name(f"{name}.stderr")
    env = {**os.environ, "SKULENS_PROGRESS": "0"}
    if paths.get(name):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [paths[name], env.get("PYTHONPATH")]))
    if name == "pyserini_bm25":
        env.setdefault("JAVA_HOME", str(Path(shutil.which("java") or "java").resolve().parents[1]))
    with errors.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", name, "--version", str(version), "--texts",
                                 str(texts_file), "--out", str(out), "--port", str(port)], env=env, cwd=ROOT,
                                stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not out.is_file():
        tail = errors.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        return {"error": f"exit {os.waitstatus_to_exitcode(status)}: {' / '.join(tail)}"[:400]}
    result = json.loads(out.read_text(encoding="utf-8"))
    result.setdefault("memory", {})["max_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return result


# -- scoring ------------------------------------------------------------------------------------
def score(qrels: dict[str, dict[str, int]], runs: dict[str, list[str]], seed: int = 0) -> dict:
    """nDCG@10 with a 95% bootstrap interval over queries, recall@100, zero-useful@10."""
    from skulens.evaluation.metrics import bootstrap_mean, evaluate, per_query, zero_useful_rate

    run = {q: {p: float(len(ps) - r) for r, p in enumerate(ps)} for q, ps in runs.items()}
    ndcg = per_query(qrels, run, "nDCG@10")
    mean, low, high = bootstrap_mean([ndcg[q] for q in sorted(ndcg)], seed=seed)
    return {"nDCG@10": round(mean, 4), "nDCG@10_ci95": [round(low, 4), round(high, 4)],
            "recall@100": round(evaluate(qrels, run, ["R(rel=4)@100"])["R(rel=4)@100"], 4),
            "zero_useful@10": round(zero_useful_rate(qrels, run, k=10, min_grade=4), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=500, help="held-out test-split queries to sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=PEERS)
    parser.add_argument("--port", type=int, default=3047)
    parser.add_argument("--pyserini-path", default=os.environ.get("SKULENS_PYSERINI_PATH", "/tmp/pys/lib"))
    parser.add_argument("--lancedb-path", default=os.environ.get("SKULENS_LANCEDB_PATH", "/tmp/lance"),
                        help="a folder holding lancedb (see the docstring); used when it exists")
    parser.add_argument("--from-report", action="store_true",
                        help="re-render docs/benchmarks/peers.md from peers.json (no measuring)")
    parser.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--version", help=argparse.SUPPRESS)
    parser.add_argument("--texts", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return

    home = Path(os.environ.get("SKULENS_HOME", ROOT / "var"))
    if args.from_report:
        saved = json.loads((ROOT / "docs" / "benchmarks" / "peers.json").read_text(encoding="utf-8"))
        report(saved["results"], home / "indexes" / "homedepot" / "versions" / saved["version"], saved["queries"],
               args, command=saved["command"], written=saved.get("written"), dense_model=saved.get("dense_model"))
        return
    version = served_version(home)
    qrels, texts = held_out_queries(args.queries, args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="skulens-peers-"))
    texts_file = scratch / "texts.json"
    texts_file.write_text(json.dumps(texts), encoding="utf-8")
    results = {}
    # Extra import folders of the peers that are not skulens dependencies (see the docstring).
    paths = {"pyserini_bm25": args.pyserini_path,
             "lancedb_hybrid": args.lancedb_path if Path(args.lancedb_path).is_dir() else None}
    for name in PEERS:
        if name in args.skip:
            results[name] = {"error": "skipped (--skip)"}
            continue
        if name == "pyserini_bm25" and not (Path(args.pyserini_path) / "pyserini").is_dir():
            results[name] = {"error": f"not run: no pyserini under {args.pyserini_path} (see the docstring)"}
            continue
        print(f"[peers] {name} ...", flush=True)
        results[name] = run_peer(name, version, texts_file, args.port, paths)
        if "runs" in results[name]:
            ms = np.array(results[name].pop("ms"))
            runs = results[name].pop("runs")
            results[name].update(score(qrels, runs), p50_ms=round(float(np.percentile(ms, 50)), 1),
                                 p95_ms=round(float(np.percentile(ms, 95)), 1))
        print(f"[peers] {name}: {json.dumps(results[name])}", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    report(results, version, len(texts), args)


def report(results: dict, version: Path, queries: int, args: argparse.Namespace, command: str | None = None,
           written: str | None = None, dense_model: str | None = None) -> None:
    from datetime import UTC, datetime

    manifest = json.loads((version / "manifest.json").read_text(encoding="utf-8"))
    command = command or "`" + " ".join([".venv/bin/python benchmarks/bench_peers.py", *sys.argv[1:]]) + "`"
    written = written or datetime.now(UTC).isoformat(timespec="seconds")
    bm25 = results.get("bm25s", {}).get("nDCG@10")
    lines = ["# Peers side by side: skulens, LanceDB, Lucene (pyserini), bm25s", "",
             f"Command: {command}  ", f"Machine: {machine_description()}  ",
             f"Written: {written}", "",
             f"Corpus: the {manifest['embed']['products']:,} Home Depot products of the served index version "
             f"`{version.name}`; {queries} held-out **real** shopper queries (test split of the Home Depot "
             "judgments, human grades; relevant = grade >= 4 of 6). Unjudged results count as not relevant, for "
             "every peer alike. nDCG@10 with a 95% bootstrap interval over queries; latency single stream on "
             "2 cores, per query, including encoding the query vector where the peer has one.", "",
             "| peer | nDCG@10 [95% CI] | x bm25s | recall@100 | zero-useful@10 | p50 | p95 | index build "
             "| index on disk | max RSS |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in PEERS:
        r = results[name]
        if "nDCG@10" not in r:
            lines.append(f"| {name} | {r.get('error', 'not run')} | | | | | | | | |")
            continue
        ci = r["nDCG@10_ci95"]
        ratio = f"{r['nDCG@10'] / bm25:.3f}" if bm25 else "-"
        disk = f"{r['index_bytes'] / 2**20:.0f} MB" if r.get("index_bytes") else "in memory"
        mem = r.get("memory", {})
        rss = (f"{mem['service_rss_mb']:.0f} MB (service)" if "service_rss_mb" in mem
               else f"{mem.get('max_rss_mb', 0):.0f} MB")
        lines.append(f"| {name} | {r['nDCG@10']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}] | {ratio} | {r['recall@100']:.4f} | "
                     f"{r['zero_useful@10']:.4f} | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms | {r['build_s']} s | "
                     f"{disk} | {rss} |")
    lines += ["", "**skulens as a results page** (k = 10; other held-out queries, validation split, never searched "
              "before) and how often each stage finished inside its timeout (the rest fell back: dense side "
              "skipped, or the fused order kept):", "",
              "| peer | page p50 | page p95 | encode in time (k=100 / k=10) | rerank in time (k=100 / k=10) |",
              "|---|---:|---:|---:|---:|"]
    for name in ("skulens", "skulens_no_rerank"):
        r = results[name]
        if "page_k10_ms" not in r:
            continue

        def share(part: str, r: dict = r) -> str:
            cells = []
            for key in ("stages_k100", "stages_k10"):
                counts = r[key].get(part, {})
                off = counts and set(counts) == {"skipped"}
                cells.append("off" if off else f"{counts.get('ok', 0)}/{sum(counts.values())}" if counts else "-")
            return " / ".join(cells)

        lines.append(f"| {name} | {r['page_k10_ms']['p50']:.1f} ms | {r['page_k10_ms']['p95']:.1f} ms | "
                     f"{share('encode')} | {share('rerank')} |")
    lines += ["", "Notes:"] + [f"- {name}: {results[name]['notes']}" for name in PEERS if results[name].get("notes")]
    lines += ["- skulens is the served configuration of that index version (its ranking.json: fusion weight, "
              "adaptive fusion, rerank depth and blend, all learned on training queries), reached over HTTP; "
              "`skulens_no_rerank` sends `\"rerank\": false`. Both ask for k = 100 (the cross-encoder reranks only "
              "the head; its depth is in ranking.json)."]
    dense = dense_model or _dense_model(version)
    if dense:
        why = ("the text-encoder champion" if dense.startswith("skulens-text-encoder") else
               "the champion embedder's text tower: without a text-encoder champion, a catalogue without photos "
               "is embedded by it")
        lines.append(f"- skulens' dense side is the index version's title vectors, from {dense} ({why}).")
    write_report("peers", lines, {"command": command, "machine": machine_description(), "version": version.name,
                                  "written": written, "queries": queries, "dense_model": dense, "results": results})


def _dense_model(version: Path) -> str | None:
    """The model that embedded an index version's vectors (its vector manifest), if the folder is here."""
    manifest = version / "vector" / "manifest.json"
    return json.loads(manifest.read_text(encoding="utf-8")).get("model_version") if manifest.is_file() else None


if __name__ == "__main__":
    main()
