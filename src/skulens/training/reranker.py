"""Cross-encoder reranker: packaged MiniLM-L6 + a scoring head, fine-tuned on Home Depot judgments.

Training pairs are the data layer's ``query_product`` pairs with ``source = judgment`` (split by
query, no product of a held-out query in training). The target is the grade scaled to [0, 1]
(``(grade - 1) / 2`` for the 1-3 scale) under a binary cross-entropy loss. Evaluation reranks each
held-out query's judged candidates and scores nDCG@10 (ir-measures) against two baselines on the
same candidates: BM25 (bm25s over every product title of the catalogue) and the bi-encoder
(cosine of packaged MiniLM sentence embeddings). Graded qrels: ``round((grade - 1) * 3)``, 0-6.
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

from skulens.data.catalog import read_table
from skulens.evaluation.rerankers import evaluate_full_corpus, evaluate_rankers
from skulens.models.reranker import CrossEncoderReranker
from skulens.settings import Settings


class NegativesConfig(BaseModel):
    """Candidates the reranker will meet when served: the lexical retriever's top ``depth`` for each
    training query. Those the judgments do not grade are added with the prior grade
    ``unjudged_grade`` (1-3 scale): below a judged relevant item, not certainly irrelevant (an
    unjudged item is unknown, not a negative)."""

    model_config = ConfigDict(extra="forbid")
    depth: int = Field(30, ge=1, le=1000)
    per_query: int = Field(8, ge=1)
    unjudged_grade: float = Field(1.5, ge=1, le=3)


class RerankerTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "custom"
    base: str = "@packaged:all-minilm-l6-v2"
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-5, gt=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(64, ge=8, le=512)
    max_train_pairs: int | None = Field(None, ge=1)
    max_eval_queries: int | None = Field(None, ge=1)
    # pointwise: binary cross-entropy on the scaled grade. listwise: batches of whole queries, a
    # softmax cross-entropy between the candidates' scores and their grades (ListNet) plus
    # `bce_weight` x the pointwise loss (keeps scores comparable across queries).
    loss: Literal["pointwise", "listwise"] = "pointwise"
    list_temperature: float = Field(0.5, gt=0)
    bce_weight: float = Field(0.5, ge=0)
    # Retrieved, unjudged candidates of each training query (None: judged pairs only).
    negatives: NegativesConfig | None = None
    # Keep the first ``layers`` transformer layers of the base (None: all): a smaller, faster student.
    layers: int | None = Field(None, ge=1)
    # Full-corpus evaluation: the lexical retriever's top ``eval_depth`` of each held-out query, reranked.
    eval_depth: int = Field(30, ge=1, le=1000)
    seed: int = 13
    device: Literal["auto", "cpu", "cuda"] = "auto"


def load_reranker_config(name_or_path: str, settings: Settings, overrides: dict[str, Any] | None = None
                         ) -> RerankerTrainConfig:
    """The reranker training config ``name_or_path`` (``configs/training/<name>.yaml`` or a path)."""
    from skulens.training.config import load_config_file

    return load_config_file(name_or_path, settings, RerankerTrainConfig, "reranker", overrides)


def judged_pairs(pairs_dir: Path, titles: dict[str, str], split: str) -> list[tuple[str, str, str, float]]:
    """(query, product_id, title, grade) of the judgment pairs of ``split``."""
    import pyarrow.dataset as ds

    source = pairs_dir / "query_product"
    if not source.is_dir():
        raise FileNotFoundError(f"no query-product pairs at {source}; run the catalog_ingest pipeline first")
    table = ds.dataset(source, partitioning="hive").to_table(
        filter=(ds.field("split") == split) & (ds.field("source") == "judgment"),
        columns=["query", "product_id", "grade"])
    rows = zip(*(table.column(c).to_pylist() for c in ("query", "product_id", "grade")), strict=True)
    return sorted((q, p, titles[p], float(g)) for q, p, g in rows if p in titles and g is not None)




def lexical_retriever(settings: Settings):  # noqa: ANN201 - Callable[[str, int], Hits]
    """The served lexical retriever as f(query, k) -> hits: BM25 (tantivy) over the whole Home Depot
    catalogue with the settings' field boosts and normaliser."""
    from skulens.retrieval.lexical import BM25Index, LexicalConfig

    index = BM25Index.build(read_table(settings, "homedepot", "products"),
                            LexicalConfig.from_settings(settings.retrieval))
    return lambda query, k: index.search(query, k=k)


def with_retrieved_negatives(pairs: list[tuple[str, str, str, float]], candidates: dict[str, list[str]],
                             titles: dict[str, str], cfg: NegativesConfig, seed: int
                             ) -> tuple[list[tuple[str, str, str, float]], int]:
    """``pairs`` plus up to ``cfg.per_query`` retrieved but unjudged candidates of each query, graded
    ``cfg.unjudged_grade``; returns the pairs and how many were added."""
    rng = random.Random(seed)
    judged: dict[str, set[str]] = {}
    for q, p, _, _ in pairs:
        judged.setdefault(q, set()).add(p)
    added = []
    for q in sorted(judged):
        unjudged = [p for p in candidates.get(q, []) if p not in judged[q] and p in titles]
        for p in rng.sample(unjudged, min(cfg.per_query, len(unjudged))):
            added.append((q, p, titles[p], cfg.unjudged_grade))
    return sorted(pairs + added), len(added)


def _grouped(pairs: list[tuple[str, str, str, float]], limit: int | None, seed: int) -> dict[str, list]:
    by_query: dict[str, list] = {}
    for q, p, t, g in pairs:
        by_query.setdefault(q, []).append((p, t, g))
    keys = sorted(by_query)
    if limit is not None and len(keys) > limit:
        keys = sorted(random.Random(seed).sample(keys, limit))
    return {k: by_query[k] for k in keys}


def bm25_scorer(titles: dict[str, str]):  # noqa: ANN201
    """BM25 (bm25s) over every product title; returns f(query, candidate titles) -> scores."""
    import bm25s

    ids = sorted(titles)
    corpus = [titles[i] for i in ids]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    row = {t: n for n, t in enumerate(corpus)}

    def score(query: str, cands: list[str]) -> np.ndarray:
        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        all_scores = retriever.get_scores(tokens) if tokens else np.zeros(len(corpus))
        return np.array([all_scores[row[t]] for t in cands])

    return score


def bi_encoder_scorer():  # noqa: ANN201
    from skulens.compat import ensure_torchvision_ops

    ensure_torchvision_ops()
    from sentence_transformers import SentenceTransformer

    from skulens.models.packaged import minilm_path

    st = SentenceTransformer(minilm_path(), device="cpu")

    def score(query: str, cands: list[str]) -> np.ndarray:
        vecs = st.encode([query, *cands], normalize_embeddings=True, convert_to_numpy=True)
        return vecs[1:] @ vecs[0]

    return score


def _subsample_by_query(pairs: list[tuple[str, str, str, float]], limit: int | None, seed: int
                        ) -> list[tuple[str, str, str, float]]:
    """Whole queries (every judged candidate of each), in random order, until ``limit`` pairs."""
    if limit is None or len(pairs) <= limit:
        return pairs
    groups = _grouped(pairs, None, seed)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    out: list[tuple[str, str, str, float]] = []
    for key in keys:
        if len(out) >= limit:
            break
        out += [(key, p, t, g) for p, t, g in groups[key]]
    return out


def _batches(train: list[tuple[str, str, str, float]], cfg: RerankerTrainConfig, rng: random.Random
             ) -> list[list[int]]:
    """Listwise: whole queries packed into batches of about ``batch_size`` pairs; else shuffled pairs."""
    if cfg.loss == "pointwise":
        order = list(range(len(train)))
        rng.shuffle(order)
        return [order[s:s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
    by_query: dict[str, list[int]] = {}
    for i, row in enumerate(train):
        by_query.setdefault(row[0], []).append(i)
    keys = sorted(by_query)
    rng.shuffle(keys)
    batches, current = [], []
    for key in keys:
        current += by_query[key]
        if len(current) >= cfg.batch_size:
            batches.append(current)
            current = []
    return batches + ([current] if current else [])


def _listwise_loss(logits, grades, queries: list[str], temperature: float):  # noqa: ANN001, ANN202
    """ListNet: cross-entropy between softmax(grades / t) and softmax(scores), per query, averaged."""
    import torch

    losses = []
    for query in dict.fromkeys(queries):
        idx = torch.tensor([i for i, q in enumerate(queries) if q == query], device=logits.device)
        if len(idx) < 2:
            continue
        target = torch.softmax(grades[idx] / temperature, dim=0)
        losses.append(-(target * torch.log_softmax(logits[idx], dim=0)).sum())
    return torch.stack(losses).mean() if losses else logits.sum() * 0.0


def train_reranker(settings: Settings, cfg: RerankerTrainConfig, *, pairs_dir: Path, run_id: str,
                   out_dir: Path | None = None, log_step=None) -> dict[str, Any]:  # noqa: ANN001
    """Fine-tune on the training queries' judgments and save to ``<out_dir>/model`` (HF format)."""
    import torch
    from tqdm.auto import tqdm

    from skulens.compat import ensure_torchvision_ops
    from skulens.models.packaged import resolve

    ensure_torchvision_ops()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    started = time.perf_counter()
    device = seeded_device(cfg.seed, cfg.device)
    out_dir = out_dir or settings.home / "training" / "reranker" / run_id
    titles = product_titles(settings)
    train = _subsample_by_query(judged_pairs(pairs_dir, titles, "train"), cfg.max_train_pairs, cfg.seed)
    if not train:
        raise ValueError(f"no training judgments in {pairs_dir}")
    judged_count, unjudged_count = len(train), 0
    if cfg.negatives is not None:
        queries = sorted({q for q, *_ in train})
        retrieve = lexical_retriever(settings)
        candidates = {q: [p for p, _ in retrieve(q, cfg.negatives.depth)] for q in queries}
        train, unjudged_count = with_retrieved_negatives(train, candidates, titles, cfg.negatives, cfg.seed)

    base = resolve(cfg.base, settings.home / "cache" / "models")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    if cfg.layers is not None:
        keep_first_layers(model, cfg.layers)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    scheduler = linear_warmup(optimizer, math.ceil(len(train) / cfg.batch_size) * cfg.epochs, cfg.warmup_fraction)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = random.Random(cfg.seed)
    losses: list[float] = []
    epoch_losses: list[float] = []
    t_train = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        batches = _batches(train, cfg, rng)
        for batch in tqdm(batches, desc=f"reranker epoch {epoch + 1}/{cfg.epochs}",
                          disable=os.environ.get("SKULENS_PROGRESS") == "0"):
            q = [train[i][0] for i in batch]
            t = [train[i][2] for i in batch]
            grades = torch.tensor([train[i][3] for i in batch], device=device)
            enc = tokenizer(q, t, truncation=True, max_length=cfg.max_length, padding=True,
                            return_tensors="pt").to(device)
            logits = model(**enc).logits.squeeze(-1)
            loss = loss_fn(logits, ((grades - 1.0) / 2.0).clamp(0, 1))
            if cfg.loss == "listwise":
                loss = cfg.bce_weight * loss + _listwise_loss(logits, grades, q, cfg.list_temperature)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        epoch_losses.append(float(np.mean(losses[-len(batches):])))
        if log_step is not None:
            log_step(epoch + 1, {"train_loss": epoch_losses[-1]})
    train_s = time.perf_counter() - t_train
    model_dir = out_dir / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "skulens_reranker.json").write_text(json.dumps({"run_id": run_id, "max_length": cfg.max_length,
                                                                 "config": cfg.model_dump(mode="json")}, indent=2))
    result = {
        "run_id": run_id, "config": cfg.model_dump(mode="json"), "model_dir": str(model_dir), "device": device,
        "data": {"train_pairs": len(train), "judged_pairs": judged_count, "retrieved_unjudged_pairs": unjudged_count,
                 "train_queries": len({q for q, *_ in train}),
                 "queries": "real Home Depot search queries with human relevance grades"},
        "history": [{"epoch": e + 1, "train_loss": v} for e, v in enumerate(epoch_losses)],
        "train_loss_first_last": [losses[0], losses[-1]],
        "timings": {"train_s": round(train_s, 1), "total_s": round(time.perf_counter() - started, 1)},
    }
    (out_dir / "train.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def seeded_device(seed: int, device: str) -> str:
    """Seed Python, NumPy and torch; the device to train on (``auto``: CUDA when there is one)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def linear_warmup(optimizer, steps: int, warmup_fraction: float):  # noqa: ANN001, ANN201
    """Linear warm-up over ``warmup_fraction`` of ``steps``, then linear decay to 0."""
    import torch

    warmup = int(steps * warmup_fraction)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))


def keep_first_layers(model, layers: int) -> None:  # noqa: ANN001
    """Drop every transformer layer of a BERT-style ``model`` after the first ``layers`` (a student
    that costs ``layers / n`` of the teacher per pair)."""
    encoder = model.base_model.encoder
    if layers < len(encoder.layer):
        encoder.layer = encoder.layer[:layers]
        model.config.num_hidden_layers = layers


def product_titles(settings: Settings) -> dict[str, str]:
    table = read_table(settings, "homedepot", "products")
    return dict(zip(table.column("product_id").to_pylist(), table.column("title").to_pylist(), strict=True))


def test_groups(settings: Settings, cfg: RerankerTrainConfig, pairs_dir: Path,
                titles: dict[str, str] | None = None) -> dict[str, list]:
    """Held-out queries (test split) with their judged candidates, subsampled by ``max_eval_queries``."""
    titles = titles or product_titles(settings)
    return _grouped(judged_pairs(pairs_dir, titles, "test"), cfg.max_eval_queries, cfg.seed)


def evaluate_reranker(settings: Settings, cfg: RerankerTrainConfig, *, model_dir: Path, pairs_dir: Path
                      ) -> dict[str, Any]:
    """nDCG@10 over each held-out query's judged candidates: BM25, bi-encoder, the cross-encoder."""
    import torch

    started = time.perf_counter()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    titles = product_titles(settings)
    groups = test_groups(settings, cfg, pairs_dir, titles)
    reranker = CrossEncoderReranker(model_dir, device=device, max_length=cfg.max_length)
    test = evaluate_rankers(groups, {"bm25": bm25_scorer(titles), "bi_encoder_minilm": bi_encoder_scorer(),
                                     "cross_encoder": reranker.score})
    val = _grouped(judged_pairs(pairs_dir, titles, "val"), cfg.max_eval_queries, cfg.seed)
    full = evaluate_full_corpus(val, groups, lexical_retriever(settings), titles, reranker.score, cfg.eval_depth)
    result = {"model_dir": str(model_dir), "test": test,
              # Whole catalogue: BM25's top eval_depth in its order (bm25) and reranked with the blend
              # learned on the validation queries (cross_encoder), as the service blends.
              "full_corpus": full,
              "data": {"test_queries": len(groups), "test_pairs": sum(len(v) for v in groups.values()),
                       "queries": "real Home Depot search queries with human relevance grades"},
              "seconds": round(time.perf_counter() - started, 1)}
    (Path(model_dir).parent / "evaluation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
