"""Text-text mode: fine-tune the query side of the two-tower model on Home Depot query → title pairs.

The text tower's trunk (MiniLM) stays frozen; its features for every query and product title are
computed once, and the text projection head is trained with open_clip's contrastive loss on
(query, relevant title) pairs of the training queries (grade >= ``min_grade``), with in-batch
negatives. Evaluation uses the held-out queries (the data layer splits by query) in two settings,
each against text-only MiniLM (the same trunk without the head) and the head as the image-text
training left it:

* full corpus: every Home Depot product title indexed, nDCG@10 / recall@100 / MRR;
* rerank: each held-out query's own judged candidates, nDCG@10.

These are real shopper queries with human grades. The trained head is written back into the
bundle (``<out_dir>/bundle``), so the encoder serving Home Depot-style text search uses it.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from skulens.evaluation import dense_run, evaluate
from skulens.evaluation.rerankers import grade_to_rel
from skulens.models.two_tower import TwoTower
from skulens.settings import Settings
from skulens.training.reranker import judged_pairs, product_titles
from skulens.vectors import normalise as _norm


def _scores(qrels: dict, queries: list[str], qv: np.ndarray, ids: list[str], docs: np.ndarray) -> dict[str, float]:
    run = dense_run(queries, qv, ids, docs, k=100)
    return evaluate(qrels, run, ["nDCG@10", "R@100", "RR(rel=4)"])


def _rerank_ndcg(groups: dict[str, list], qv: dict[str, np.ndarray], tv: dict[str, np.ndarray]) -> float:
    qrels = {q: {p: grade_to_rel(g) for p, _, g in c} for q, c in groups.items()}
    run = {q: {p: float(qv[q] @ tv[p]) for p, _, _ in c} for q, c in groups.items()}
    return evaluate(qrels, run, ["nDCG@10"])["nDCG@10"]


def train_query_tower(settings: Settings, *, bundle: Path, pairs_dir: Path, out_dir: Path, epochs: int = 8,
                      batch_size: int = 256, lr: float = 1e-3, min_grade: float = 2.33, seed: int = 13,
                      max_eval_queries: int | None = 1000, max_corpus_products: int | None = None
                      ) -> dict[str, Any]:
    """Train the text head on query → title pairs; return before/after metrics on held-out queries."""
    import torch

    from skulens.compat import ensure_torchvision_ops
    from skulens.training.features import text_trunk_features

    ensure_torchvision_ops()
    from skulens.models.two_tower import import_open_clip

    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cache = settings.home / "cache" / "models"
    tower = TwoTower.load(bundle, cache_dir=cache)
    titles = product_titles(settings)
    train = [(q, p) for q, p, _, g in judged_pairs(pairs_dir, titles, "train") if g >= min_grade]
    test = judged_pairs(pairs_dir, titles, "test")
    ids = sorted(titles)
    if max_corpus_products is not None and len(ids) > max_corpus_products:
        # Every judged product stays in the corpus; the rest is a seeded sample (smaller runs).
        judged = {p for _, p in train} | {p for _, p, _, _ in test}
        others = sorted(set(ids) - judged)
        extra = rng.choice(others, max(0, max_corpus_products - len(judged)), replace=False).tolist() if others else []
        ids = sorted(judged | set(extra))
    queries = sorted({q for q, _ in train} | {q for q, _, _, _ in test})
    feats_title = text_trunk_features(tower, [titles[i] for i in ids], desc="product titles")
    feats_query = text_trunk_features(tower, queries, desc="queries")
    title_row = {p: i for i, p in enumerate(ids)}
    query_row = {q: i for i, q in enumerate(queries)}

    groups: dict[str, list] = {}
    for q, p, t, g in test:
        groups.setdefault(q, []).append((p, t, g))
    held_out = sorted(groups)
    if max_eval_queries is not None and len(held_out) > max_eval_queries:
        held_out = sorted(rng.choice(held_out, max_eval_queries, replace=False).tolist())
    groups = {q: groups[q] for q in held_out}
    qrels = {q: {p: grade_to_rel(g) for p, _, g in c} for q, c in groups.items()}

    def evaluate_head(head) -> dict[str, float]:  # noqa: ANN001
        with torch.inference_mode():
            if head is None:
                tv, qv = _norm(feats_title), _norm(feats_query)
            else:
                tv = _norm(head(torch.from_numpy(feats_title)).numpy())
                qv = _norm(head(torch.from_numpy(feats_query)).numpy())
        q_idx = [query_row[q] for q in held_out]
        full = _scores(qrels, held_out, qv[q_idx], ids, tv)
        rerank = _rerank_ndcg(groups, {q: qv[query_row[q]] for q in held_out},
                              {p: tv[title_row[p]] for c in groups.values() for p, _, _ in c})
        return {f"full_corpus_{k}": v for k, v in full.items()} | {"rerank_nDCG@10": rerank}

    head = tower.model.text.proj
    before = {"text_only_minilm": evaluate_head(None), "image_text_head": evaluate_head(head)}
    # The head as trained on image-text pairs is the starting point; it is what serving used before.
    loss_fn = import_open_clip().ClipLoss()
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    optimizer = torch.optim.AdamW(list(head.parameters()) + [scale], lr=lr, weight_decay=0.01)
    pairs = np.array([(query_row[q], title_row[p]) for q, p in train])
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(pairs))
        losses = []
        for s in range(0, len(order) - batch_size + 1, batch_size):
            batch = pairs[order[s:s + batch_size]]
            # One positive per query in a batch: a repeated query would be its own false negative.
            _, first = np.unique(batch[:, 0], return_index=True)
            batch = batch[first]
            zq = torch.nn.functional.normalize(head(torch.from_numpy(feats_query[batch[:, 0]])), dim=-1)
            zt = torch.nn.functional.normalize(head(torch.from_numpy(feats_title[batch[:, 1]])), dim=-1)
            loss = loss_fn(zq, zt, scale.exp().clamp(max=100))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None})
    after = evaluate_head(head)
    saved = tower.save(out_dir / "bundle", meta={"text_text": {"source_bundle": str(bundle), "epochs": epochs,
                                                             "train_pairs": len(train)}})
    result = {
        "bundle": str(saved), "train_pairs": len(train), "held_out_queries": len(held_out),
        "corpus_products": len(ids), "queries": "real Home Depot search queries with human relevance grades",
        "before": before, "after": after, "history": history,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "text_text.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    if os.environ.get("SKULENS_PROGRESS") != "0":
        print(json.dumps({k: result[k] for k in ("before", "after")}, indent=2))
    return result
