"""Benchmark: ONNX Runtime thread settings for the served models (what `serving.onnx_threads`'s
default rests on).

For the served text tower (the embedder champion's ONNX file that passed parity) and a registered
reranker's ONNX file, on the published artefacts: intra-op threads 1 and 2, spinning on and off;
per call the wall time and the process CPU time at batch 1 and 8 (text, 10 tokens) or 20 and 160
pairs (reranker, 32 tokens), and the wall time per call when two threads call the same session at
once (two searches in flight). Token ids are random (cost depends on shape, not on the words).

    .venv/bin/python benchmarks/bench_onnx_threads.py [--reranker-version 1]
"""

from __future__ import annotations

import argparse
import threading
import time
from datetime import UTC, datetime

import numpy as np
from _report import machine_description, write_report


def session(path, threads: int, spin: bool):  # noqa: ANN001, ANN201
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(run, calls: int) -> dict:  # noqa: ANN001
    for _ in range(3):
        run()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        run()
    alone = {"wall_ms": (time.perf_counter() - wall) / calls * 1000,
             "cpu_ms": (time.process_time() - cpu) / calls * 1000}
    threads = [threading.Thread(target=lambda: [run() for _ in range(calls // 2)]) for _ in range(2)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alone["two_callers_ms_per_call"] = (time.perf_counter() - wall) / (2 * (calls // 2)) * 1000
    return {k: round(v, 2) for k, v in alone.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reranker-version", type=int, default=1)
    args = parser.parse_args()
    from skulens.settings import load_settings
    from skulens.tracking.registry import embedder_onnx, reranker_onnx, version_artifacts

    settings = load_settings("local")
    text = embedder_onnx(version_artifacts(settings, "embedder"), "text")
    reranker = reranker_onnx(version_artifacts(settings, "reranker", version=args.reranker_version))
    rng = np.random.default_rng(0)
    rows = []
    for threads in (1, 2):
        for spin in (True, False):
            if text is not None:
                s = session(text, threads, spin)
                name = s.get_inputs()[0].name
                for batch in (1, 8):
                    ids = rng.integers(1000, 20000, (batch, 10)).astype(np.int64)
                    rows.append({"model": f"text tower ({text.stem})", "threads": threads, "spinning": spin,
                                 "batch": batch, **measure(lambda s=s, ids=ids, n=name: s.run(None, {n: ids}), 100)})
            if reranker is not None:
                s = session(reranker, threads, spin)
                for pairs in (20, 160):
                    feeds = {"input_ids": rng.integers(1000, 20000, (pairs, 32)).astype(np.int64),
                             "attention_mask": np.ones((pairs, 32), np.int64),
                             "token_type_ids": np.zeros((pairs, 32), np.int64)}
                    calls = 10 if pairs > 20 else 20
                    rows.append({"model": f"cross-encoder ({reranker.stem})", "threads": threads, "spinning": spin,
                                 "batch": pairs, **measure(lambda s=s, f=feeds: s.run(None, f), calls)})
            print(rows[-1], flush=True)
    report = {"written_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_description(),
              "rows": rows}
    lines = ["# ONNX Runtime threads for the served models", "",
             "Command: `.venv/bin/python benchmarks/bench_onnx_threads.py "
             f"--reranker-version {args.reranker_version}`  ",
             f"Machine: {report['machine']}  ", f"Written: {report['written_at']}", "",
             "Per call: wall and process CPU time alone, and wall time per call with two threads calling the same "
             "session at once. A second intra-op thread cuts a lone call's wall time but costs more CPU than it "
             "saves (its spinning between operators), and under two concurrent callers one thread per session does "
             "as well or better: hence `serving.onnx_threads: 0` = cores / workers, and two workers on 2 cores.", "",
             "| model | threads | spinning | batch | wall | CPU | 2 callers, per call |",
             "|---|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['threads']} | {r['spinning']} | {r['batch']} | {r['wall_ms']} ms | "
              f"{r['cpu_ms']} ms | {r['two_callers_ms_per_call']} ms |" for r in rows]
    write_report("onnx_threads", lines, report)


if __name__ == "__main__":
    main()
