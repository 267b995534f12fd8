"""Benchmark: the query text tower exported with a fixed 64-token input against one with a
dynamic sequence axis (the export since this benchmark), fp32 and served INT8, on ONNX Runtime.

The champion embedder's bundle (the dev home's registry) is exported both ways; each file encodes
300 attribute-derived fashion queries one at a time (what a search request does). Reported: p50 /
p95 latency per query and the mean cosine with the PyTorch tower (parity).

    .venv/bin/python benchmarks/bench_query_encoder.py [--queries 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _report import machine_description, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()

    import torch
    from bench_serving import queries

    from skulens.export.onnx_export import export_module, ffn_projections, quantize_dynamic_int8, session
    from skulens.models.two_tower import TwoTower
    from skulens.settings import load_settings
    from skulens.tracking.registry import embedder_files, version_artifacts

    settings = load_settings("local")
    artifacts = version_artifacts(settings, "embedder")
    bundle, _ = embedder_files(artifacts)
    tower = TwoTower.load(bundle, cache_dir=settings.home / "cache" / "models")
    texts = queries(settings.home, args.queries)
    with torch.no_grad():
        reference = tower.model.encode_text(tower.tokenize(texts), normalize=True).numpy()

    class TextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = tower.model

        def forward(self, input_ids):  # noqa: ANN001, ANN202
            return self.model.encode_text(input_ids, normalize=True)

    example = tower.tokenize(["a red shirt for men", "blue running shoes"]).cpu()
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for axis in ("fixed 64 tokens", "dynamic"):
            dynamic = axis == "dynamic"
            fp32 = export_module(TextEncoder(), (example,), Path(scratch) / f"{dynamic}.onnx", ["input_ids"],
                                 "text_embedding", dynamic_seq=dynamic)
            int8 = quantize_dynamic_int8(fp32, Path(scratch) / f"{dynamic}.int8.onnx", ffn_projections(fp32))
            for precision, path in (("fp32", fp32), ("INT8 (served recipe)", int8)):
                sess = session(path, threads=2)
                tokenize = tower.tokenize_padded if dynamic else tower.tokenize
                sess.run(None, {"input_ids": tokenize(texts[:1]).cpu().numpy().astype(np.int64)})
                times, vectors = [], []
                for text in texts:
                    started = time.perf_counter()
                    ids = tokenize([text]).cpu().numpy().astype(np.int64)
                    vectors.append(sess.run(None, {"input_ids": ids})[0][0])
                    times.append((time.perf_counter() - started) * 1000)
                out = np.asarray(vectors)
                out /= np.linalg.norm(out, axis=1, keepdims=True)
                rows[f"{axis}, {precision}"] = {
                    "p50_ms": round(float(np.percentile(times, 50)), 2),
                    "p95_ms": round(float(np.percentile(times, 95)), 2),
                    "cosine_vs_torch": round(float((out * reference).sum(axis=1).mean()), 5)}
                print(axis, precision, rows[f"{axis}, {precision}"], flush=True)
    payload = {"written_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_description(),
               "model": f"{artifacts['name']}/{artifacts['version']}", "queries": len(texts), "results": rows}
    lines = ["# Query text tower: fixed-length vs dynamic ONNX export", "",
             f"Command: `.venv/bin/python benchmarks/bench_query_encoder.py --queries {args.queries}`  ",
             f"Machine: {payload['machine']}  ", f"Written: {payload['written_at']}", "",
             f"Model {payload['model']} (the champion embedder's text tower), {len(texts)} attribute-derived "
             "fashion queries encoded one at a time on ONNX Runtime (2 threads), tokenization included.", "",
             "| export | p50 | p95 | mean cosine vs PyTorch |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['p50_ms']} ms | {r['p95_ms']} ms | {r['cosine_vs_torch']} |" for name, r in rows.items()]
    lines += ["", "The serving figures in serving.md were measured with the fixed-length file the dev home's "
              "registry holds; a model exported since (train_and_export) serves the dynamic one."]
    write_report("query_encoder", lines, payload)


if __name__ == "__main__":
    main()
