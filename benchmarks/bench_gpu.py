"""Benchmark: the GPU side of serving at 10M products, for a lent accelerator (H100/H200).

What it measures, each on the GPU when there is one (``--device cuda``), else on the CPU:

* **Vector search at ``--n`` products** (default 10M): the real catalogue embeddings (``--seed``,
  written by ``--pack`` here from the published index) scaled by perturbed copies as in
  ``bench_serving.py`` (sigma 0.02, renormalised), held on the device in fp16, searched exactly
  (matrix product + top-k in chunks): recall@10 against an fp32 exact search on sampled queries,
  latency p50/p95 and QPS at batch sizes 1 to 1,024. At 10M x 256 dimensions (5 GB in fp16) one
  exact scan is a few milliseconds on an H100-class GPU, so brute force needs no graph and no
  recall gate; FAISS GPU and cuVS CAGRA are used instead when ``faiss`` with GPU support is
  importable there (it is not in the image as last read: its wheels are larger than what may travel).
* **Encoders and the reranker** with the served architectures: the text tower and the
  cross-encoder are BERT-style MiniLM-L6 (6 layers, 384 wide), the image trunk EfficientNet-Lite0
  (timm). Built at random weights from their configurations, because the trained weights are
  larger than what may travel with the working tree: timings, not quality. fp16 on the GPU.
* **A GPU search service budget**: per search, one query encoding, one exact scan and one rerank of
  the top 20, each batched across concurrent searches; the QPS the three batched steps sustain
  at batch 64 and their summed latency, beside the CPU service's figures (docs/benchmarks/serving.md).
  The HTTP layer, BM25 and fusion stay on the CPU cores and are not part of this figure.

    # here (CPU machine), once: the seed embeddings from the published fashion index
    .venv/bin/python benchmarks/bench_gpu.py --pack
    # on the lent machine (Python 3.12 + torch there; nothing else of skulens is needed):
    python3 benchmarks/bench_gpu.py --device cuda --n 10000000 --out "$OUT"
    # a quick CPU check of the script itself
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --n 200000 --out var/bench/gpu-check

It writes ``gpu.md`` and ``gpu.json`` into ``--out`` (default docs/benchmarks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "benchmarks" / "gpu_seed" / "fashion-embeddings.npy"


def pack(path: Path) -> None:
    """Write the published fashion index's embeddings as fp16 (small enough to travel)."""
    import sys

    sys.path.insert(0, str(ROOT / "src"))
    from skulens.retrieval.embed import read_embeddings
    from skulens.settings import load_settings
    from skulens.storage.layout import index_store

    settings = load_settings("local")
    current = index_store(settings, "fashion").current()
    if current is None:
        raise SystemExit("no published fashion index: run `make demo` first")
    _, vectors, _ = read_embeddings(current / "embeddings.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors.astype(np.float16))
    print(f"{path}: {vectors.shape[0]:,} x {vectors.shape[1]} fp16, {path.stat().st_size / 2**20:.1f} MiB")


def timed(fn, device: str, repeats: int) -> list[float]:  # noqa: ANN001
    """Milliseconds of ``fn()`` per repeat, after two warm-ups (synchronised on a GPU)."""
    import torch

    for _ in range(2):
        fn()
    out = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - started) * 1000)
    return out


def summary(ms: list[float], batch: int) -> dict:
    p50 = float(np.percentile(ms, 50))
    return {"batch": batch, "p50_ms": round(p50, 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "per_second": round(batch / (p50 / 1000), 1)}


def scaled_vectors(seed: np.ndarray | None, n: int, dim: int, device: str, sigma: float = 0.02):  # noqa: ANN201
    """``n`` unit vectors on ``device`` (fp16 on a GPU, fp32 on a CPU): the seed's rows plus Gaussian
    noise, renormalised."""
    import torch

    generator = torch.Generator(device=device).manual_seed(0)
    if seed is None:  # no seed: clustered synthetic vectors (stated in the report)
        base = torch.nn.functional.normalize(torch.randn(50_000, dim, device=device, generator=generator), dim=1)
    else:
        base = torch.from_numpy(seed.astype(np.float32)).to(device)
    out = torch.empty(n, base.shape[1], dtype=torch.float16 if device == "cuda" else torch.float32, device=device)
    chunk = 1_000_000
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(n, start + chunk), device=device) % base.shape[0]
        block = base[rows] + sigma * torch.randn(len(rows), base.shape[1], device=device, generator=generator)
        block[: max(0, base.shape[0] - start)] = base[rows[: max(0, base.shape[0] - start)]]  # copy 0 is exact
        out[start:start + len(rows)] = torch.nn.functional.normalize(block, dim=1).to(out.dtype)
    return out


def exact_search(vectors, queries, k: int, chunk: int = 2_000_000):  # noqa: ANN001, ANN201
    """Top-``k`` inner products of ``queries`` over ``vectors`` (chunked matrix products)."""
    import torch

    best_scores, best_rows = None, None
    for start in range(0, vectors.shape[0], chunk):
        scores = queries @ vectors[start:start + chunk].T
        top = torch.topk(scores.float(), k, dim=1)
        rows = top.indices + start
        if best_scores is None:
            best_scores, best_rows = top.values, rows
        else:
            merged = torch.cat([best_scores, top.values], 1)
            order = torch.topk(merged, k, dim=1).indices
            best_scores = torch.gather(merged, 1, order)
            best_rows = torch.gather(torch.cat([best_rows, rows], 1), 1, order)
    return best_scores, best_rows


def vector_search(args: argparse.Namespace, device: str) -> dict:
    import torch

    seed = np.load(args.seed) if args.seed and Path(args.seed).is_file() else None
    dim = seed.shape[1] if seed is not None else 256
    started = time.perf_counter()
    vectors = scaled_vectors(seed, args.n, dim, device)
    if device == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - started
    generator = torch.Generator(device=device).manual_seed(1)
    picks = torch.randint(0, args.n, (1024,), device=device, generator=generator)
    queries = torch.nn.functional.normalize(vectors[picks].float() + 0.05 * torch.randn(
        1024, dim, device=device, generator=generator), dim=1)
    # recall@10 of the fp16 scan against an fp32 scan, on 100 queries
    _, fp16_rows = exact_search(vectors, queries[:100].to(vectors.dtype), 10)
    exact_rows = []
    for q in queries[:100]:
        scores = torch.cat([(vectors[s:s + 2_000_000].float() @ q) for s in range(0, args.n, 2_000_000)])
        exact_rows.append(torch.topk(scores, 10).indices)
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(fp16_rows, exact_rows, strict=True))
    results = {"n": args.n, "dim": dim, "seed": "real fashion embeddings, perturbed copies" if seed is not None
               else "synthetic clustered vectors (no --seed file)", "prepare_s": round(build_s, 2),
               "dtype": str(vectors.dtype).removeprefix("torch."),
               "memory_gb": round(vectors.numel() * vectors.element_size() / 1e9, 2),
               "recall@10_fp16_vs_fp32": round(hits / 1000, 4),
               "batches": []}
    for batch in args.batches:
        q = queries[:batch].to(vectors.dtype)
        ms = timed(lambda q=q, v=vectors: exact_search(v, q, 10), device, args.repeats)
        results["batches"].append(summary(ms, batch))
        print("vector search", results["batches"][-1], flush=True)
    del vectors
    return results


def bert(device: str, classifier: bool):  # noqa: ANN201
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, num_labels=1)
    model = (BertForSequenceClassification(config) if classifier else BertModel(config)).eval().to(device)
    return model.half() if device == "cuda" else model


def models(args: argparse.Namespace, device: str) -> dict:
    import torch

    out: dict = {"text_tower": [], "cross_encoder": [], "image_trunk": []}
    with torch.inference_mode():
        text = bert(device, classifier=False)
        for batch in args.batches:
            ids = torch.randint(1000, 30000, (batch, 16), device=device)
            out["text_tower"].append(summary(timed(lambda ids=ids: text(input_ids=ids), device, args.repeats), batch))
            print("text tower", out["text_tower"][-1], flush=True)
        cross = bert(device, classifier=True)
        for searches in (1, 8, 64):
            ids = torch.randint(1000, 30000, (searches * 20, 48), device=device)  # 20 pairs a search
            row = summary(timed(lambda ids=ids: cross(input_ids=ids), device, args.repeats), searches)
            out["cross_encoder"].append({**row, "pairs": searches * 20})
            print("cross-encoder, searches of 20 pairs", out["cross_encoder"][-1], flush=True)
        try:
            import timm

            trunk = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0).eval().to(device)
            trunk = trunk.half() if device == "cuda" else trunk
            for batch in (1, 32):
                photos = torch.randn(batch, 3, 224, 224, device=device, dtype=next(trunk.parameters()).dtype)
                out["image_trunk"].append(summary(timed(lambda p=photos: trunk(p), device, args.repeats), batch))
                print("image trunk", out["image_trunk"][-1], flush=True)
        except ImportError:
            out["image_trunk"] = "timm not installed"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", action="store_true", help="write the seed embeddings (fp16) and stop")
    parser.add_argument("--seed", default=str(SEED))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    if args.pack:
        pack(Path(args.seed))
        return
    import torch

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu to check the script")
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    report = {"written_at": None, "device": name, "torch": torch.__version__, "python": platform.python_version(),
              "cpu_cores": os.cpu_count(), "vector_search": vector_search(args, device), "models": models(args, device)}
    v, m = report["vector_search"], report["models"]
    at64 = {row["batch"]: row for row in v["batches"]}.get(64)
    text64 = {row["batch"]: row for row in m["text_tower"]}.get(64)
    cross64 = {row["batch"]: row for row in m["cross_encoder"]}.get(64)
    if at64 and text64 and cross64:
        step_ms = at64["p50_ms"] + text64["p50_ms"] + cross64["p50_ms"]
        report["batched_search_budget"] = {"searches_per_batch": 64, "gpu_ms_per_batch": round(step_ms, 2),
                                           "searches_per_second": round(64 / (step_ms / 1000), 1)}
    report["written_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = ["# GPU serving figures", "",
             f"Command: `python3 benchmarks/bench_gpu.py --device {device} --n {args.n}`  ",
             f"Device: {name}, torch {torch.__version__}, Python {platform.python_version()}  ",
             f"Written: {report['written_at']}", "",
             f"## Exact vector search, {v['n']:,} x {v['dim']} {v['dtype']} ({v['seed']}; {v['memory_gb']} GB)", "",
             f"recall@10 of the {v['dtype']} scan against fp32: {v['recall@10_fp16_vs_fp32']}; vectors prepared in "
             f"{v['prepare_s']} s", "", "| queries per call | p50 | p95 | queries/s |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['p50_ms']} ms | {r['p95_ms']} ms | {r['per_second']:,} |" for r in v["batches"]]
    lines += ["", "## Models (served architectures, random weights: timings only)", "",
              "| model | batch | p50 | p95 | items/s |", "|---|---:|---:|---:|---:|"]
    for label, rows in (("text tower (MiniLM-L6, 16 tokens)", m["text_tower"]),
                        ("cross-encoder (MiniLM-L6, searches of 20 pairs x 48 tokens)", m["cross_encoder"]),
                        ("image trunk (EfficientNet-Lite0, 224 px)", m["image_trunk"])):
        if isinstance(rows, str):
            lines.append(f"| {label} | - | {rows} | | |")
            continue
        lines += [f"| {label} | {r['batch']} | {r['p50_ms']} ms | {r['p95_ms']} ms | {r['per_second']:,} |"
                  for r in rows]
    if "batched_search_budget" in report:
        b = report["batched_search_budget"]
        lines += ["", f"Batched GPU work of 64 searches (encode + exact scan + rerank of 20): "
                      f"{b['gpu_ms_per_batch']} ms, about {b['searches_per_second']:,} searches/s of GPU capacity "
                      "(HTTP, BM25 and fusion on the CPU cores not included)."]
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
