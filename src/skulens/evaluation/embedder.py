"""Held-out evaluation of a two-tower model on the fashion catalogue, and its named baselines.

All queries here are **attribute-derived** (``"<gender> <colour> <article type>"`` built from the
held-out products' own attributes), not real shopper queries: the fashion catalogue has none.
Relevance is graded from the attributes: 3 = article type, colour and gender match; 2 = article
type and colour; 1 = article type only.

Settings (every one scored with ir-measures):

* ``t2i_R@k``: a product's title → its own photo among the split's photos (recall@1/5/10);
* ``image_only_nDCG@10``: attribute queries over an index of photos only (no titles at all);
* ``i2i_P@10``: a photo → the other photos; relevant = same article type and colour;
* ``full_title_*`` and ``degraded_title_*`` (colour and gender words removed from titles):
  ``text_nDCG@10`` indexes title vectors only; ``fused_nDCG@10`` indexes the fused product vector
  ``normalise(w * image + (1 - w) * title)`` with ``w`` chosen on the validation split.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from skulens.data.pairs import ProductSet
from skulens.evaluation import dense_run, evaluate
from skulens.evaluation.metrics import Qrels
from skulens.vectors import normalise

FUSION_GRID = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 11))
KEYS = ("article_type", "colour", "gender")


@dataclass
class SplitEmbeddings:
    """Normalised vectors of one split under one model (``images`` is None for a text-only model)."""

    images: np.ndarray | None
    titles: np.ndarray
    degraded_titles: np.ndarray
    queries: np.ndarray


def attribute_queries(products: ProductSet, max_queries: int | None = None, seed: int = 0) -> tuple[list[str], Qrels]:
    """Attribute-derived query texts and their graded qrels over ``products``."""
    combos = sorted({tuple(a.get(k, "").lower() for k in KEYS)
                     for a in products.attributes if all(a.get(k) for k in KEYS)})
    if max_queries is not None and len(combos) > max_queries:
        picks = np.random.default_rng(seed).choice(len(combos), size=max_queries, replace=False)
        combos = [combos[i] for i in sorted(picks)]
    texts = [f"{gender} {colour} {article}" for article, colour, gender in combos]
    attrs = [tuple(a.get(k, "").lower() for k in KEYS) for a in products.attributes]
    qrels: Qrels = {}
    for qid, (article, colour, gender) in enumerate(combos):
        judged = {}
        for pid, (a, c, g) in zip(products.product_ids, attrs, strict=True):
            if a == article:
                judged[pid] = 3 if (c == colour and g == gender) else 2 if c == colour else 1
        qrels[str(qid)] = judged
    return texts, qrels


def _ndcg(query_vecs: np.ndarray, qrels: Qrels, ids: list[str], docs: np.ndarray) -> float:
    qids = list(qrels)
    return evaluate(qrels, dense_run(qids, query_vecs, ids, docs, k=10), ["nDCG@10"])["nDCG@10"]


def evaluate_split(products: ProductSet, emb: SplitEmbeddings, qrels: Qrels,
                   fusion_weights: dict[str, float] | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Metrics of one model on one split; returns (metrics, fusion weights used).

    With ``fusion_weights`` None the weight of each setting is chosen here (validation split);
    pass the validation weights when scoring the test split.
    """
    ids = products.product_ids
    metrics: dict[str, float] = {}
    chosen: dict[str, float] = {}
    for setting, titles in (("full_title", emb.titles), ("degraded_title", emb.degraded_titles)):
        metrics[f"{setting}_text_nDCG@10"] = _ndcg(emb.queries, qrels, ids, titles)
        if emb.images is None:
            continue
        grid = FUSION_GRID if fusion_weights is None else (fusion_weights[setting],)
        scored = {w: _ndcg(emb.queries, qrels, ids, normalise(w * emb.images + (1 - w) * titles)) for w in grid}
        best = max(scored, key=lambda w: (scored[w], -w))
        chosen[setting] = float(best)
        metrics[f"{setting}_fused_nDCG@10"] = scored[best]
        metrics[f"{setting}_fusion_weight"] = best
    if emb.images is not None:
        metrics["image_only_nDCG@10"] = _ndcg(emb.queries, qrels, ids, emb.images)
        metrics.update(text_to_own_photo(products, emb.titles, emb.images))
        metrics.update(photo_to_photo(products, emb.images))
    return metrics, chosen


def text_to_own_photo(products: ProductSet, texts: np.ndarray, images: np.ndarray) -> dict[str, float]:
    """Each product's text vector (its display name) queries a photo-only index of the split:
    recall@1/5/10 of its own photo (``t2i_R@k``)."""
    ids = products.product_ids
    own = {str(i): {pid: 1} for i, pid in enumerate(ids)}
    run = dense_run(list(own), normalise(np.asarray(texts, dtype=np.float32)), ids,
                    normalise(np.asarray(images, dtype=np.float32)), k=10)
    return {f"t2i_{m}": v for m, v in evaluate(own, run, ["R@1", "R@5", "R@10"]).items()}


def photo_to_photo(products: ProductSet, images: np.ndarray) -> dict[str, float]:
    """Each photo of the split queries the others (itself excluded): P@10 of the same article type
    and colour (``i2i_P@10``) and of the same type (``i2i_P@10_type``)."""
    ids = products.product_ids
    images = normalise(np.asarray(images, dtype=np.float32))
    run = dense_run(ids, images, ids, images, k=10, exclude=ids)
    out = {}
    for metric, fields in (("i2i_P@10", ("article_type", "colour")), ("i2i_P@10_type", ("article_type",))):
        keys = [tuple(a.get(f) for f in fields) for a in products.attributes]
        same = {pid: {other: 1 for other, ko in zip(ids, keys, strict=True) if ko == k and other != pid}
                for pid, k in zip(ids, keys, strict=True)}
        out[metric] = evaluate(same, run, ["P@10"])["P@10"]
    return out


def tfidf_vectors(texts: list[str]) -> np.ndarray:
    """(N, vocabulary) unit rows of sublinear TF-IDF over lower-cased word tokens (smoothed idf, as
    scikit-learn's default): the text reference for photo -> photo, since a product's display name
    usually states its type and colour."""
    docs = [Counter(re.findall(r"\w+", (t or "").lower())) for t in texts]
    vocabulary = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
    df = np.zeros(max(1, len(vocabulary)), dtype=np.float64)
    for d in docs:
        df[[vocabulary[w] for w in d]] += 1
    idf = np.log((1 + len(docs)) / (1 + df)) + 1
    out = np.zeros((len(docs), max(1, len(vocabulary))), dtype=np.float32)
    for row, d in enumerate(docs):
        for w, tf in d.items():
            out[row, vocabulary[w]] = (1 + np.log(tf)) * idf[vocabulary[w]]
    return normalise(out)


def minilm_embeddings(products: ProductSet, query_texts: list[str]) -> SplitEmbeddings:
    """The text-only baseline: packaged all-MiniLM-L6-v2 through sentence-transformers, no images."""
    from skulens.compat import ensure_torchvision_ops

    ensure_torchvision_ops()
    from sentence_transformers import SentenceTransformer

    from skulens.models.packaged import minilm_path

    st = SentenceTransformer(minilm_path(), device="cpu")

    def enc(texts: list[str]) -> np.ndarray:
        return st.encode(texts, batch_size=256, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)

    return SplitEmbeddings(images=None, titles=enc(products.titles),
                           degraded_titles=enc(products.degraded_titles), queries=enc(query_texts))
