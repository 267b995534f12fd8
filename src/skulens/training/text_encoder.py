"""Dense text side for query -> title search: the packaged all-MiniLM-L6-v2 fine-tuned on real Home
Depot queries (the data layer's ``query_product`` judgment pairs of the training split).

Loss: multiple-negatives ranking (InfoNCE over the batch, as sentence-transformers'
``MultipleNegativesRankingLoss``): each training query against its relevant title (grade >=
``min_grade``), every other title of the batch as a negative, plus mined hard negatives: titles the
judges graded low for the same query (judged, so not a guess that an unseen product is irrelevant).
Batches never hold the same query or the same title twice, so no positive is scored as a negative.

Evaluation is where it would serve: every title of the catalogue indexed, held-out queries (test
split) retrieve from all of it, nDCG@10 / recall@100 / zero-useful@10 against the packaged MiniLM
(the baseline it must beat) and BM25, alone and fused with BM25 (the fusion weight learned on the
validation queries). Early stopping keeps the epoch with the best validation nDCG@10.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from skulens.evaluation.metrics import Qrels, dense_run, evaluate, zero_useful_rate
from skulens.evaluation.ranking import learn_weight
from skulens.evaluation.rerankers import grade_to_rel
from skulens.retrieval.fusion import weighted
from skulens.settings import Settings
from skulens.training.reranker import judged_pairs, lexical_retriever, linear_warmup, product_titles, seeded_device

Pair = tuple[str, str, str, float]


class TextEncoderTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "custom"
    base: str = "@packaged:all-minilm-l6-v2"
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-5, gt=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(48, ge=8, le=512)
    # A judged title is a positive at this grade or above (1-3 scale; 2.33 = "relevant" in the harness).
    min_grade: float = Field(2.33, ge=1, le=3)
    # Hard negatives: judged titles of the same query at or below this grade, up to this many per pair.
    max_negative_grade: float = Field(1.67, ge=1, le=3)
    hard_negatives: int = Field(1, ge=0, le=8)
    # Similarity scale of the InfoNCE logits (sentence-transformers' default 20).
    scale: float = Field(20.0, gt=0)
    max_train_pairs: int | None = Field(None, ge=1)
    max_eval_queries: int | None = Field(600, ge=1)
    # Index only the evaluation queries' judged products plus a seeded sample of the rest, up to this
    # many (None: every title of the catalogue, as published figures use).
    max_corpus: int | None = Field(None, ge=1)
    seed: int = 13
    device: Literal["auto", "cpu", "cuda"] = "auto"


def load_text_encoder_config(name_or_path: str, settings: Settings, overrides: dict[str, Any] | None = None
                             ) -> TextEncoderTrainConfig:
    """The text-encoder training config ``name_or_path`` (``configs/training/<name>.yaml`` or a path)."""
    from skulens.training.config import load_config_file

    return load_config_file(name_or_path, settings, TextEncoderTrainConfig, "text encoder", overrides)


def training_triples(pairs: list[Pair], cfg: TextEncoderTrainConfig) -> list[tuple[str, str, list[str]]]:
    """(query, relevant title, hard-negative titles) for every positive judgment of ``pairs``."""
    rng = random.Random(cfg.seed)
    by_query: dict[str, list[Pair]] = {}
    for row in pairs:
        by_query.setdefault(row[0], []).append(row)
    out = []
    for query in sorted(by_query):
        rows = by_query[query]
        negatives = sorted({t for _, _, t, g in rows if g <= cfg.max_negative_grade})
        for _, _, title, grade in rows:
            if grade >= cfg.min_grade:
                hard = rng.sample(negatives, min(cfg.hard_negatives, len(negatives)))
                out.append((query, title, hard))
    rng.shuffle(out)
    return out[:cfg.max_train_pairs] if cfg.max_train_pairs else out


def unique_batches(triples: list[tuple[str, str, list[str]]], batch_size: int, rng: random.Random
                   ) -> list[list[int]]:
    """Batches of ``batch_size`` triples in which no query and no title occurs twice (a title that is
    one query's positive must not be another's in-batch negative); leftovers go to later batches."""
    order = list(range(len(triples)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    while order:
        batch, seen, rest = [], set(), []
        for i in order:
            query, title, hard = triples[i]
            keys = {("q", query), ("t", title), *(("t", h) for h in hard)}
            if len(batch) < batch_size and not keys & seen:
                batch.append(i)
                seen |= keys
            else:
                rest.append(i)
        batches.append(batch)
        order = rest
    return batches


def _infonce(model, queries: list[str], docs: list[str], scale: float):  # noqa: ANN001, ANN202
    """Cross-entropy of each query against every doc of the batch; query i's positive is doc i."""
    import torch

    q = model(model.tokenize(queries))["sentence_embedding"]
    d = model(model.tokenize(docs))["sentence_embedding"]
    logits = scale * torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(d, dim=-1).T
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(queries), device=logits.device))


def _held_out(settings: Settings, pairs_dir: Path, titles: dict[str, str], split: str, limit: int | None,
              seed: int) -> Qrels:
    qrels: Qrels = {}
    for q, p, _, g in judged_pairs(pairs_dir, titles, split):
        qrels.setdefault(q, {})[p] = grade_to_rel(g)
    keys = sorted(qrels)
    if limit is not None and len(keys) > limit:
        keys = sorted(random.Random(seed).sample(keys, limit))
    return {q: qrels[q] for q in keys}


def held_out_texts(settings: Settings, pairs_dir: Path, limit: int, seed: int) -> list[str]:
    """Validation queries and their judged titles, interleaved, up to ``limit`` (the parity texts)."""
    titles = product_titles(settings)
    rows = judged_pairs(pairs_dir, titles, "val")
    queries = sorted({q for q, *_ in rows})
    docs = sorted({t for *_, t, _ in rows})
    rng = random.Random(seed)
    picked_q = rng.sample(queries, min(len(queries), limit // 2))
    picked_t = rng.sample(docs, min(len(docs), limit - len(picked_q)))
    return [t for pair in zip(picked_q, picked_t, strict=False) for t in pair] + picked_q[len(picked_t):] + \
        picked_t[len(picked_q):]


class CorpusEvaluator:
    """Full-catalogue retrieval of held-out queries: a dense encoder alone and fused with BM25."""

    def __init__(self, settings: Settings, pairs_dir: Path, cfg: TextEncoderTrainConfig) -> None:
        self.titles = product_titles(settings)
        self.val = _held_out(settings, pairs_dir, self.titles, "val", cfg.max_eval_queries, cfg.seed)
        self.test = _held_out(settings, pairs_dir, self.titles, "test", cfg.max_eval_queries, cfg.seed)
        self.ids = sorted(self.titles)
        if cfg.max_corpus is not None and len(self.ids) > cfg.max_corpus:
            judged = {p for qrels in (self.val, self.test) for docs in qrels.values() for p in docs}
            rest = sorted(set(self.ids) - judged)
            extra = random.Random(cfg.seed).sample(rest, max(0, min(len(rest), cfg.max_corpus - len(judged))))
            self.ids = sorted(judged | set(extra))
        retrieve, indexed = lexical_retriever(settings), set(self.ids)
        # BM25 over the same products as the dense side (its hits outside a sampled corpus dropped).
        self.lexical = {q: [h for h in retrieve(q, 100) if h[0] in indexed] for q in [*self.val, *self.test]}

    def measure(self, model) -> dict[str, Any]:  # noqa: ANN001 - a SentenceTransformer
        """Dense and dense+BM25 (weight learned on validation) figures on the test queries."""
        docs = model.encode([self.titles[i] for i in self.ids], batch_size=256, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)
        runs = {}
        for name, qrels in (("val", self.val), ("test", self.test)):
            qids = list(qrels)
            vecs = model.encode(qids, batch_size=256, normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=False)
            runs[name] = {q: sorted(hits.items(), key=lambda kv: -kv[1])
                          for q, hits in dense_run(qids, vecs, self.ids, docs, k=100).items()}
        weight, _ = learn_weight(runs["val"], self.lexical, self.val)
        hybrid = {q: weighted(runs["test"][q], self.lexical[q], weight) for q in self.test}
        return {"val_dense_nDCG@10": _figures(self.val, runs["val"])["nDCG@10"],
                "dense": _figures(self.test, runs["test"]), "hybrid": _figures(self.test, hybrid),
                "fusion_weight": weight}

    def bm25(self) -> dict[str, float]:
        return _figures(self.test, {q: self.lexical[q] for q in self.test})


def _figures(qrels: Qrels, hits: dict[str, list[tuple[str, float]]]) -> dict[str, float]:
    run = {q: {p: float(len(h) - r) for r, (p, _) in enumerate(h)} for q, h in hits.items()}
    out = evaluate(qrels, run, ["nDCG@10", "R(rel=4)@100"])
    out["zero_useful@10"] = zero_useful_rate(qrels, run, k=10, min_grade=4)
    return {k: round(v, 4) for k, v in out.items()}


def train_text_encoder(settings: Settings, cfg: TextEncoderTrainConfig, *, pairs_dir: Path, run_id: str,
                       out_dir: Path | None = None, log_step=None) -> dict[str, Any]:  # noqa: ANN001
    """Fine-tune the text encoder, keep the epoch with the best validation nDCG@10, save it to
    ``<out_dir>/model`` (sentence-transformers format) and measure it against its baselines."""
    import torch
    from tqdm.auto import tqdm

    from skulens.compat import ensure_torchvision_ops
    from skulens.models.packaged import resolve

    ensure_torchvision_ops()
    from sentence_transformers import SentenceTransformer

    started = time.perf_counter()
    device = seeded_device(cfg.seed, cfg.device)
    out_dir = out_dir or settings.home / "training" / "text_encoder" / run_id
    titles = product_titles(settings)
    triples = training_triples(judged_pairs(pairs_dir, titles, "train"), cfg)
    if not triples:
        raise ValueError(f"no training judgments at grade >= {cfg.min_grade} in {pairs_dir}")
    model = SentenceTransformer(resolve(cfg.base, settings.home / "cache" / "models"), device=device)
    model.max_seq_length = cfg.max_length
    evaluator = CorpusEvaluator(settings, pairs_dir, cfg)
    model.eval()
    baseline = evaluator.measure(model)
    rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    scheduler = linear_warmup(optimizer, math.ceil(len(triples) / cfg.batch_size) * cfg.epochs, cfg.warmup_fraction)
    model_dir = out_dir / "model"
    history, best = [], None
    t_train = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        losses = []
        for batch in tqdm(unique_batches(triples, cfg.batch_size, rng), desc=f"text encoder epoch {epoch + 1}",
                          disable=os.environ.get("SKULENS_PROGRESS") == "0"):
            rows = [triples[i] for i in batch]
            docs = [t for _, t, _ in rows] + [h for *_, hard in rows for h in hard]
            loss = _infonce(model, [q for q, _, _ in rows], docs, cfg.scale)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        model.eval()
        figures = evaluator.measure(model)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), **figures})
        if log_step is not None:
            log_step(epoch + 1, {"train_loss": history[-1]["train_loss"],
                                 "val_dense_nDCG@10": figures["val_dense_nDCG@10"]})
        if best is None or figures["val_dense_nDCG@10"] > best["val_dense_nDCG@10"]:
            best = {"epoch": epoch + 1, **figures}
            model.save(str(model_dir))
    result = {
        "run_id": run_id, "config": cfg.model_dump(mode="json"), "model_dir": str(model_dir), "device": device,
        "data": {"train_triples": len(triples), "train_queries": len({q for q, *_ in triples}),
                 "hard_negatives": sum(len(h) for *_, h in triples),
                 "val_queries": len(evaluator.val), "test_queries": len(evaluator.test),
                 "corpus": len(evaluator.ids),
                 "queries": "real Home Depot search queries with human relevance grades"},
        "history": history, "best_epoch": best["epoch"],
        "test": {"tuned": best, "packaged_minilm": baseline, "bm25": evaluator.bm25()},
        "timings": {"train_s": round(time.perf_counter() - t_train, 1),
                    "total_s": round(time.perf_counter() - started, 1)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
