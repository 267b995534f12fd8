"""Export + INT8 + the parity gate, for the two-tower encoders and the reranker.

The gate (thresholds in ``models.parity``): an INT8 artefact is served only if the cosine between
its outputs and the fp32 outputs on held-out inputs is at least ``min_cosine`` (mean over inputs;
the minimum is reported too) and the task metric drops by at most ``max_recall_drop``
(title→own-photo recall@10 for the encoders; nDCG@10 over judged candidates for the reranker).
Otherwise the INT8 file is kept for inspection, the decision names the failed check with its
figures, and the fp32 ONNX artefact is served.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from skulens.export.onnx_export import (
    export_reranker,
    export_text_encoder,
    export_two_tower,
    ffn_projections,
    quantize_dynamic_int8,
    quantize_static_int8,
    run,
    session,
)
from skulens.settings import ParitySettings


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _latency_ms(sess, feeds: dict[str, np.ndarray], repeats: int = 5) -> float:  # noqa: ANN001
    sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def _recall_at_10(text: np.ndarray, image: np.ndarray) -> float:
    """Title i → photo i among the photos (each query has exactly one relevant photo), by ir-measures."""
    from skulens.evaluation import dense_run, evaluate

    ids = [str(i) for i in range(len(text))]
    run = dense_run(ids, text, ids, image, k=10)
    return evaluate({i: {i: 1} for i in ids}, run, ["R@10"])["R@10"]


def _own_photo_hits(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Per query: is title i's own photo i in its top 10 among the photos."""
    from skulens.evaluation import dense_run

    ids = [str(i) for i in range(len(text))]
    run = dense_run(ids, text, ids, image, k=10)
    return np.array([i in run[i] for i in ids], dtype=bool)


def _retrieval_holds(fp32_hits: np.ndarray, int8_hits: np.ndarray, parity: ParitySettings) -> tuple[bool, str]:
    """Whether INT8 keeps title→photo retrieval: a recall@10 drop up to ``max_recall_drop`` passes;
    a larger one fails when it is a real loss (a one-sided exact McNemar test on the queries that
    changed, at ``recall_drop_alpha``) or above ``max_recall_drop_hard`` whatever the test says.
    Queries whose own photo sits right at rank 10 flip either way under any perturbation; on a
    few hundred pairs a bare threshold of 0.005 refused a tower whose cosine was 0.998."""
    from scipy.stats import binomtest

    n = len(fp32_hits)
    lost, gained = int((fp32_hits & ~int8_hits).sum()), int((~fp32_hits & int8_hits).sum())
    drop = (lost - gained) / n if n else 0.0
    p_value = float(binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue) if lost + gained else 1.0
    detail = f"recall@10 drop {drop:.4f} ({lost} queries lost, {gained} gained of {n}; McNemar p={p_value:.3f})"
    if drop <= parity.max_recall_drop:
        return True, detail
    if drop > parity.max_recall_drop_hard:
        return False, f"{detail} > {parity.max_recall_drop_hard} (hard limit)"
    return bool(p_value >= parity.recall_drop_alpha), detail


def _rank_correlation(groups: dict[str, list], a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Mean Kendall tau between two scorers' orders of each query's candidates (what reranking
    uses is the order, so the INT8 file must keep it)."""
    from scipy.stats import kendalltau

    taus = [kendalltau(a[q], b[q]).statistic for q in groups if len(groups[q]) > 1]
    taus = [t for t in taus if np.isfinite(t)]
    return float(np.mean(taus)) if taus else 1.0


def _choose(name: str, fp32_out: np.ndarray, candidates: dict[str, Path], feeds: dict[str, np.ndarray],
            parity: ParitySettings, threads: int | None) -> dict[str, Any]:
    """Score every INT8 candidate of one tower; pick the fastest that passes the cosine check."""
    fp32_sess = session(Path(candidates.pop("fp32")), threads)
    report: dict[str, Any] = {"fp32_latency_ms": _latency_ms(fp32_sess, {k: v[:8] for k, v in feeds.items()}),
                              "candidates": {}}
    for method, path in candidates.items():
        try:
            sess = session(path, threads)
            out = run(sess, **feeds)
        except Exception as exc:  # noqa: BLE001 - a quantizer/runtime failure rejects that candidate
            report["candidates"][method] = {"path": str(path), "passed": False, "reason": f"failed to run: {exc}"}
            continue
        cos = _cosines(fp32_out, out)
        passed = float(cos.mean()) >= parity.min_cosine
        report["candidates"][method] = {
            "path": str(path), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "latency_ms_batch8": _latency_ms(sess, {k: v[:8] for k, v in feeds.items()}), "passed": passed,
            "reason": None if passed else f"{name}: mean cosine {cos.mean():.4f} < {parity.min_cosine}",
            "outputs": out,
        }
    for cand in report["candidates"].values():  # INT8 exists to be faster: a slower one is not served
        if cand["passed"] and cand["latency_ms_batch8"] >= report["fp32_latency_ms"]:
            cand["passed"], cand["reason"] = False, (f"{name}: int8 {cand['latency_ms_batch8']:.2f} ms is not faster "
                                                     f"than fp32 {report['fp32_latency_ms']:.2f} ms (batch 8)")
    passing = {m: c for m, c in report["candidates"].items() if c["passed"]}
    report["chosen"] = min(passing, key=lambda m: passing[m]["latency_ms_batch8"]) if passing else None
    return report


# Inputs on which an exported fp32 graph is compared with torch (the INT8 gates use all of them).
EXPORT_CHECK_INPUTS = 64


def export_embedder(bundle: Path, out_dir: Path, *, texts: list[str], images: list, calibration_images: list,
                    parity: ParitySettings, cache_dir: Path, threads: int | None = None) -> dict[str, Any]:
    """Export both towers, quantize, gate; write ``export.json``; return the decision.

    ``texts[i]`` and ``images[i]`` must describe the same held-out product (recall check).
    """
    from skulens.models.two_tower import TwoTower

    started = time.perf_counter()
    tower = TwoTower.load(bundle, cache_dir=cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = export_two_tower(tower, out_dir)
    tokens = tower.tokenize(texts).cpu().numpy()
    pixels = np.stack([tower.load_image(i).numpy() for i in images]).astype(np.float32)
    calib = np.stack([tower.load_image(i).numpy() for i in calibration_images]).astype(np.float32)
    ref_text = run(session(fp32["text"], threads), input_ids=tokens)
    ref_image = run(session(fp32["image"], threads), pixels=pixels)
    import torch

    # The exported graphs against torch on the first few inputs: a faithful export does not depend
    # on which inputs check it, and torch on every parity photo was a fifth of the whole gate
    # (29 s of 146 s for 512 photos on 2 cores). The INT8 gates below use every input.
    check = EXPORT_CHECK_INPUTS
    with torch.inference_mode():  # the same decoded pixels, not a second decode
        torch_image = tower.model.encode_image(torch.from_numpy(pixels[:check]), normalize=True).numpy()
    export_diff = float(max(np.abs(ref_text[:check] - tower.encode_texts(texts[:check])).max(),
                            np.abs(ref_image[:check] - torch_image).max()))

    text_candidates = {"fp32": fp32["text"],
                       "dynamic": quantize_dynamic_int8(fp32["text"], out_dir / "text.int8-dynamic.onnx")}
    ffn = ffn_projections(fp32["text"])
    if ffn:
        text_candidates["dynamic_ffn_fp32"] = quantize_dynamic_int8(
            fp32["text"], out_dir / "text.int8-dynamic-ffn-fp32.onnx", keep_fp32=ffn)
    text = _choose("text tower", ref_text, text_candidates, {"input_ids": tokens}, parity, threads)
    image_candidates = {"fp32": fp32["image"]}
    batches = [calib[i:i + 16] for i in range(0, len(calib), 16)]
    image_candidates["static_qdq"] = quantize_static_int8(fp32["image"], out_dir / "image.int8-static.onnx",
                                                          "pixels", batches)
    # No dynamic candidate for the image tower: ConvInteger measured 0.75-0.86 cosine and 10-20x slower.
    image = _choose("image tower", ref_image, image_candidates, {"pixels": pixels}, parity, threads)

    n = min(len(texts), len(images))
    recall_fp32 = _recall_at_10(ref_text[:n], ref_image[:n])
    reasons = [c["reason"] for t in (text, image) for c in t["candidates"].values() if not c["passed"]]
    # The retrieval check walks the passing candidates, fastest first, and falls back one tower at a
    # time: every INT8 text candidate with the INT8 image tower, then the image tower alone, then the
    # text candidates alone. A drop the text tower causes must not take the image tower's INT8 too,
    # and a fast text candidate that only just passes the cosine gate must not cost recall.
    def passing(report: dict[str, Any]) -> list[str]:
        ok = [m for m, c in report["candidates"].items() if c["passed"]]
        return sorted(ok, key=lambda m: report["candidates"][m]["latency_ms_batch8"])

    def out(report: dict[str, Any], ref: np.ndarray, method: str | None) -> np.ndarray:
        return report["candidates"][method]["outputs"] if method else ref

    texts_ok, images_ok = passing(text), passing(image)
    combos = [(t, i) for i in images_ok[:1] for t in [*texts_ok, None]] + [(t, None) for t in texts_ok]
    recall_int8, chosen, retrieval = recall_fp32, (None, None), []
    fp32_hits = _own_photo_hits(ref_text[:n], ref_image[:n])
    for text_method, image_method in combos:
        served_text, served_image = out(text, ref_text, text_method)[:n], out(image, ref_image, image_method)[:n]
        holds, detail = _retrieval_holds(fp32_hits, _own_photo_hits(served_text, served_image), parity)
        retrieval.append({"text": text_method or "fp32", "image": image_method or "fp32", "passed": holds,
                          "detail": detail})
        if holds:
            chosen, recall_int8 = (text_method, image_method), _recall_at_10(served_text, served_image)
            break
        reasons.append(f"{detail}: refused for text {text_method or 'fp32'}, image {image_method or 'fp32'}")
    text["chosen"], image["chosen"] = chosen
    served = {
        "text": str(text["candidates"][text["chosen"]]["path"]) if text["chosen"] else str(fp32["text"]),
        "image": str(image["candidates"][image["chosen"]]["path"]) if image["chosen"] else str(fp32["image"]),
    }
    for tower_report in (text, image):
        for cand in tower_report["candidates"].values():
            cand.pop("outputs", None)
    decision = {
        "kind": "embedder", "bundle": str(bundle), "fp32": {k: str(v) for k, v in fp32.items()},
        "onnx_vs_torch_max_abs_diff": export_diff, "onnx_vs_torch_inputs": min(check, len(texts), len(images)),
        "parity_inputs": {"texts": len(texts), "images": len(images)},
        "thresholds": parity.model_dump(), "text": text, "image": image,
        "recall@10": {"fp32": recall_fp32,
                      "served": recall_int8 if (text["chosen"] or image["chosen"]) else recall_fp32},
        "retrieval_checks": retrieval,
        "int8_served": {"text": text["chosen"] is not None, "image": image["chosen"] is not None},
        "served": served, "reasons": [r for r in reasons if r], "seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / "export.json").write_text(json.dumps(decision, indent=2), encoding="utf-8")
    return decision


def _median_ms(calls: Iterable[Callable[[], Any]]) -> float:
    """Median wall milliseconds of ``calls`` (0 when there are none)."""
    times = []
    for call in calls:
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return round(float(np.median(times)), 2) if times else 0.0


def _dynamic_int8_variants(fp32_path: Path, stem: str) -> Iterator[tuple[str, Path]]:
    """Dynamic INT8 files of a transformer, fastest first: every MatMul, then the FFN projections
    kept fp32. A generator, so a variant is only quantized when the faster one failed."""
    for variant, keep_fp32 in (("dynamic", None), ("dynamic_ffn_fp32", ffn_projections(fp32_path))):
        target = fp32_path.with_name(f"{stem}.int8-{variant.replace('_', '-')}.onnx")
        yield variant, quantize_dynamic_int8(fp32_path, target, keep_fp32=keep_fp32)


def export_reranker_gated(model_dir: Path, out_dir: Path, *, groups: dict[str, list], parity: ParitySettings,
                          max_length: int = 64, threads: int | None = None) -> dict[str, Any]:
    """Export the cross-encoder and quantize it two ways, fastest first: every MatMul dynamic INT8,
    then with the FFN projections kept fp32 (as the text tower; all-INT8 moves near-tied judged
    candidates past each other: Kendall tau 0.81 where FFN-fp32 keeps 0.93). Each is gated on the
    per-query rank correlation of its scores with the fp32 file's and on nDCG@10; the first that
    passes is served, else the fp32 file."""
    from transformers import AutoTokenizer

    from skulens.evaluation.rerankers import evaluate_rankers

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32_path = export_reranker(model_dir, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def scorer(path: Path):  # noqa: ANN202
        sess = session(path, threads)

        def score(query: str, titles: list[str]) -> np.ndarray:
            enc = tokenizer([query] * len(titles), titles, truncation=True, max_length=max_length, padding=True,
                            return_tensors="np")
            return run(sess, **{k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})

        return score

    def ms_per_query(score) -> float:  # noqa: ANN001 - the first 20 queries' candidates, median
        return _median_ms(lambda q=q, c=c: score(q, [t for _, t, _ in c]) for q, c in list(groups.items())[:20])

    fp32_score = scorer(fp32_path)
    per_fp32 = {q: fp32_score(q, [t for _, t, _ in c]) for q, c in groups.items()}
    fp32_ndcg = evaluate_rankers(groups, {"fp32": fp32_score})["fp32"]["nDCG@10"]
    candidates: dict[str, dict[str, Any]] = {}
    chosen = None
    for variant, path in _dynamic_int8_variants(fp32_path, "reranker"):
        int8_score = scorer(path)
        per_int8 = {q: int8_score(q, [t for _, t, _ in c]) for q, c in groups.items()}
        a, b = np.concatenate(list(per_fp32.values())), np.concatenate(list(per_int8.values()))
        tau = _rank_correlation(groups, per_fp32, per_int8)
        drop = fp32_ndcg - evaluate_rankers(groups, {"int8": int8_score})["int8"]["nDCG@10"]
        reasons = []
        if tau < parity.min_rank_corr:
            reasons.append(f"reranker ({variant}): rank correlation (Kendall tau) {tau:.4f} < {parity.min_rank_corr}")
        if drop > parity.max_recall_drop:
            reasons.append(f"reranker ({variant}): nDCG@10 drops {drop:.4f} > {parity.max_recall_drop}")
        candidates[variant] = {"path": str(path), "score_cosine": float(_cosines(a[None, :], b[None, :])[0]),
                               "score_corr": float(np.corrcoef(a, b)[0, 1]), "rank_corr_kendall": tau,
                               "nDCG@10": fp32_ndcg - drop, "ms_per_query": ms_per_query(int8_score),
                               "reasons": reasons}
        if not reasons:
            chosen = variant
            break
    shown = candidates[chosen or list(candidates)[-1]]
    decision = {
        "kind": "reranker", "model_dir": str(model_dir), "fp32": str(fp32_path), "int8": shown["path"],
        "thresholds": parity.model_dump(), "score_cosine": shown["score_cosine"], "score_corr": shown["score_corr"],
        "rank_corr_kendall": shown["rank_corr_kendall"],
        "nDCG@10": {"fp32": fp32_ndcg, "int8": shown["nDCG@10"]},
        "fp32_ms_per_query": ms_per_query(fp32_score), "candidates": candidates, "int8_variant": chosen,
        "queries": len(groups), "int8_served": chosen is not None,
        "served": shown["path"] if chosen is not None else str(fp32_path),
        # Every variant's reasons when none passed; none when one did (the faster one's failure is
        # in candidates).
        "reasons": [] if chosen is not None else [r for c in candidates.values() for r in c["reasons"]],
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / "export.json").write_text(json.dumps(decision, indent=2), encoding="utf-8")
    return decision


def export_text_encoder_gated(model_dir: Path, out_dir: Path, *, texts: list[str], parity: ParitySettings,
                              max_length: int = 64, threads: int | None = None) -> dict[str, Any]:
    """Export the fine-tuned text encoder (fp32 ONNX, checked against PyTorch) and two dynamic INT8
    variants, fastest first (every MatMul; FFN projections fp32); the first whose vectors keep a mean
    cosine of at least ``min_cosine`` with the fp32 file's on ``texts`` (held-out queries and
    titles) and whose top-10 neighbours among ``texts`` stay the same for at least
    ``1 - max_recall_drop_hard`` of them is served, else the fp32 file."""
    from skulens.retrieval.encoders import OnnxTextEncoder, make_encoder

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32_path = export_text_encoder(model_dir, out_dir)
    torch_vecs = make_encoder("minilm", path=str(model_dir)).encode_texts(texts)
    fp32 = OnnxTextEncoder(fp32_path, model_dir, max_length=max_length, threads=threads)
    fp32_vecs = fp32.encode_texts(texts)
    export_cosine = float(_cosines(torch_vecs, fp32_vecs).mean())

    def neighbours(vecs: np.ndarray) -> np.ndarray:
        scores = vecs @ vecs.T
        np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1)[:, :10]

    def latency(encoder: OnnxTextEncoder) -> float:
        return _median_ms(lambda t=t: encoder.encode_texts([t]) for t in texts[:50])

    base = neighbours(fp32_vecs)
    candidates: dict[str, dict[str, Any]] = {}
    chosen = None
    reasons_export = [] if export_cosine >= 0.999 else \
        [f"text encoder: fp32 ONNX cosine with PyTorch {export_cosine:.5f} < 0.999 (export is wrong)"]
    for variant, path in () if reasons_export else _dynamic_int8_variants(fp32_path, "text-encoder"):
        encoder = OnnxTextEncoder(path, model_dir, max_length=max_length, threads=threads)
        vecs = encoder.encode_texts(texts)
        cos = _cosines(fp32_vecs, vecs)
        overlap = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(base, neighbours(vecs), strict=True)]))
        reasons = []
        if cos.mean() < parity.min_cosine:
            reasons.append(f"text encoder ({variant}): mean cosine {cos.mean():.4f} < {parity.min_cosine}")
        if 1 - overlap > parity.max_recall_drop_hard:
            reasons.append(f"text encoder ({variant}): top-10 neighbours change {1 - overlap:.4f} > "
                           f"{parity.max_recall_drop_hard}")
        candidates[variant] = {"path": str(path), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                               "top10_overlap": overlap, "ms_per_query": latency(encoder), "reasons": reasons}
        if not reasons:
            chosen = variant
            break
    decision = {
        "kind": "text_encoder", "model_dir": str(model_dir), "fp32": str(fp32_path), "texts": len(texts),
        "thresholds": parity.model_dump(), "fp32_vs_torch_cosine": export_cosine,
        "fp32_ms_per_query": latency(fp32), "candidates": candidates, "int8_variant": chosen,
        "int8_served": chosen is not None,
        "served": candidates[chosen]["path"] if chosen is not None else str(fp32_path),
        "reasons": reasons_export + ([] if chosen is not None else
                                     [r for c in candidates.values() for r in c["reasons"]]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if reasons_export:
        decision["served"] = None  # an export that does not reproduce PyTorch is not served at all
    (out_dir / "export.json").write_text(json.dumps(decision, indent=2), encoding="utf-8")
    return decision
