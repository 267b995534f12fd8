"""Benchmark: encoder and reranker speed in torch fp32, ONNX Runtime fp32 and ONNX Runtime INT8 (CPU).

Writes docs/benchmarks/export_int8.md (and .json): latency at batch 1 (median and p95 of
single-request calls) and throughput at batch 32 (items/s), with the parity (cosine against fp32)
of each INT8 variant on real held-out inputs (fashion titles and photos, Home Depot query/title
pairs). Speed does not depend on the trained weights; parity does, so pass the trained artefacts:

    .venv/bin/python benchmarks/bench_export.py [--bundle DIR] [--reranker DIR] [--threads 2]

Without ``--bundle`` the offline model is used as built (packaged towers, untrained projections);
without ``--reranker`` the packaged MiniLM with a fresh scoring head.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _report import machine_description, write_report

ROOT = Path(__file__).resolve().parents[1]


# The served static INT8 recipe of the image tower (skulens.export.onnx_export).
STATIC_IMAGE = "ONNX INT8 (static QDQ; stem, stages 0-1 and any colour branch + head fp32)"

def timed(fn, repeats: int) -> list[float]:  # noqa: ANN001
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def measure(name: str, runners: dict, batch1, batch32, repeats: int) -> list[dict]:  # noqa: ANN001
    rows = []
    for variant, run in runners.items():
        lat = timed(lambda run=run: run(batch1), repeats)
        thr = timed(lambda run=run: run(batch32), max(3, repeats // 5))
        rows.append({"model": name, "variant": variant, "p50_ms_batch1": float(np.median(lat) * 1000),
                     "p95_ms_batch1": float(np.percentile(lat, 95) * 1000),
                     "items_per_s_batch32": float(32 / np.median(thr))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="trained two-tower bundle (default: offline model as built)")
    parser.add_argument("--reranker", type=Path, help="fine-tuned cross-encoder folder (default: packaged MiniLM)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from skulens.compat import ensure_torchvision_ops

    ensure_torchvision_ops()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from skulens.data.catalog import read_table
    from skulens.export.onnx_export import (
        export_reranker,
        export_two_tower,
        ffn_projections,
        quantize_dynamic_int8,
        quantize_static_int8,
        run,
        session,
    )
    from skulens.models.packaged import minilm_path
    from skulens.models.two_tower import TwoTower
    from skulens.settings import load_settings

    settings = load_settings("local")
    cache = settings.home / "cache" / "models"
    tower = TwoTower.load(args.bundle, cache_dir=cache) if args.bundle else TwoTower.build("skulens-offline",
                                                                                          cache_dir=cache)
    fashion = read_table(settings, "fashion", "products").to_pylist()
    with_photo = [p for p in fashion if p["image_uri"]]
    rng = np.random.default_rng(0)
    picks = [with_photo[i] for i in rng.choice(len(with_photo), 96, replace=False)]
    titles = [p["title"] for p in picks]
    pixels = np.stack([tower.load_image(p["image_uri"]).numpy() for p in picks]).astype(np.float32)
    work = Path(tempfile.mkdtemp(prefix="skulens-bench-export-"))
    paths = export_two_tower(tower, work)
    text_int8 = quantize_dynamic_int8(paths["text"], work / "text.int8.onnx")
    text_int8_ffn = quantize_dynamic_int8(paths["text"], work / "text.int8-ffn-fp32.onnx",
                                          keep_fp32=ffn_projections(paths["text"]))
    image_static = quantize_static_int8(paths["image"], work / "image.int8-static.onnx", "pixels",
                                        [pixels[64:80], pixels[80:96]])
    image_dynamic = quantize_dynamic_int8(paths["image"], work / "image.int8-dynamic.onnx")

    rows, parity = [], {}
    tokens = tower.tokenize(titles).cpu().numpy()
    sess = {k: session(p, args.threads) for k, p in {"text_fp32": paths["text"], "text_int8": text_int8,
                                                      "text_int8_ffn": text_int8_ffn,
                                                      "image_fp32": paths["image"], "image_static": image_static,
                                                      "image_dynamic": image_dynamic}.items()}

    def torch_text(x):  # noqa: ANN001, ANN202
        with torch.inference_mode():
            return tower.model.encode_text(torch.from_numpy(x), normalize=True).numpy()

    def torch_image(x):  # noqa: ANN001, ANN202
        with torch.inference_mode():
            return tower.model.encode_image(torch.from_numpy(x), normalize=True).numpy()

    rows += measure("text tower", {
        "torch fp32": torch_text,
        "ONNX fp32": lambda x: run(sess["text_fp32"], input_ids=x),
        "ONNX INT8 (dynamic)": lambda x: run(sess["text_int8"], input_ids=x),
        "ONNX INT8 (dynamic, whole FFN fp32)": lambda x: run(sess["text_int8_ffn"], input_ids=x),
    }, tokens[:1], tokens[:32], args.repeats)
    rows += measure("image tower", {
        "torch fp32": torch_image,
        "ONNX fp32": lambda x: run(sess["image_fp32"], pixels=x),
        STATIC_IMAGE: lambda x: run(sess["image_static"], pixels=x),
        "ONNX INT8 (dynamic)": lambda x: run(sess["image_dynamic"], pixels=x),
    }, pixels[:1], pixels[:32], args.repeats)

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())

    ref_t, ref_i = run(sess["text_fp32"], input_ids=tokens[:64]), run(sess["image_fp32"], pixels=pixels[:64])
    parity["text tower ONNX INT8 (dynamic)"] = cos(ref_t, run(sess["text_int8"], input_ids=tokens[:64]))
    parity["text tower ONNX INT8 (dynamic, whole FFN fp32)"] = cos(ref_t, run(sess["text_int8_ffn"],
                                                                             input_ids=tokens[:64]))
    parity["image tower " + STATIC_IMAGE] = cos(
        ref_i, run(sess["image_static"], pixels=pixels[:64]))
    parity["image tower ONNX INT8 (dynamic)"] = cos(ref_i, run(sess["image_dynamic"], pixels=pixels[:64]))

    rr_dir = args.reranker
    if rr_dir is None:
        rr_dir = work / "reranker-base"
        AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=1).save_pretrained(rr_dir)
        AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(rr_dir)
    rr_fp32 = export_reranker(rr_dir, work)
    rr_int8 = quantize_dynamic_int8(rr_fp32, work / "reranker.int8.onnx")
    tok = AutoTokenizer.from_pretrained(str(rr_dir))
    judged = read_table(settings, "homedepot", "judgments").to_pylist()
    hd_titles = dict(zip(*(read_table(settings, "homedepot", "products").column(c).to_pylist()
                           for c in ("product_id", "title")), strict=True))
    sample = [judged[i] for i in rng.choice(len(judged), 64, replace=False)]
    enc = tok([j["query"] for j in sample], [hd_titles[j["product_id"]] for j in sample], truncation=True,
              max_length=64, padding=True, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    rr_model = AutoModelForSequenceClassification.from_pretrained(str(rr_dir), num_labels=1).eval()
    rs = {"fp32": session(rr_fp32, args.threads), "int8": session(rr_int8, args.threads)}

    def sl(f: dict, n: int) -> dict:
        return {k: v[:n] for k, v in f.items()}

    def torch_rr(f):  # noqa: ANN001, ANN202
        with torch.inference_mode():
            return rr_model(**{k: torch.from_numpy(v) for k, v in f.items()}).logits.numpy()

    rows += measure("reranker (query, title) pairs", {
        "torch fp32": torch_rr,
        "ONNX fp32": lambda f: run(rs["fp32"], **f),
        "ONNX INT8 (dynamic)": lambda f: run(rs["int8"], **f),
    }, sl(feeds, 1), sl(feeds, 32), args.repeats)
    a, b = run(rs["fp32"], **feeds), run(rs["int8"], **feeds)
    parity["reranker ONNX INT8 (dynamic), score correlation"] = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    base = {r["model"]: r for r in rows if r["variant"] == "torch fp32"}
    lines = [
        "# Encoders and reranker: torch fp32 vs ONNX Runtime fp32 vs INT8 (CPU)", "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine_description()}, {args.threads} threads.",
        f"Command: `.venv/bin/python benchmarks/bench_export.py {' '.join(sys.argv[1:])}`".rstrip(), "",
        f"Models: two-tower `{tower.spec.name}` ({f'trained bundle {args.bundle}' if args.bundle else 'as built'}),"
        f" reranker {'fine-tuned ' + str(args.reranker) if args.reranker else 'packaged MiniLM-L6 + fresh head'}."
        " Inputs: real fashion titles (padded to the 64-token context) and photos (224 px); real Home Depot"
        " query/title pairs (padded to the longest of the batch, up to 64 tokens).", "",
        "| model | variant | p50 ms (batch 1) | p95 ms (batch 1) | speed-up vs torch (batch 1) | items/s (batch 32)"
        " | speed-up vs torch (batch 32) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = base[r["model"]]
        lines.append(f"| {r['model']} | {r['variant']} | {r['p50_ms_batch1']:.2f} | {r['p95_ms_batch1']:.2f} | "
                     f"{t['p50_ms_batch1'] / r['p50_ms_batch1']:.2f}x | {r['items_per_s_batch32']:.1f} | "
                     f"{r['items_per_s_batch32'] / t['items_per_s_batch32']:.2f}x |")
    lines += ["", "Parity of INT8 against ONNX fp32 on the same real inputs (mean cosine of the outputs; for the "
              "reranker, correlation of scores):", ""]
    lines += [f"- {k}: {v:.4f}" for k, v in parity.items()]
    lines += ["", "The pipeline's parity gate (`skulens.export.parity`) also checks the recall@10 drop and serves an "
              "INT8 artefact only when it passes and is faster than fp32; see "
              "`SKULENS_HOME/training/embedder/<run>/onnx/export.json` for the decision of each run.",
              "TensorRT is not measured: it cannot be installed on these machines."]
    write_report("export_int8", lines, {"machine": machine_description(), "threads": args.threads,
                                        "command": sys.argv, "rows": rows, "parity": parity,
                                        "bundle": str(args.bundle) if args.bundle else None,
                                        "reranker": str(args.reranker) if args.reranker else None})


if __name__ == "__main__":
    main()
