"""Shared by the relevance benchmarks: the Home Depot judgments split as `skulens eval` splits them,
and its BM25 and dense retrievers over the whole catalogue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Judged:
    """The catalogue, its judged queries (harness relevance), their split and which have a useful product."""

    products: Any
    ids: list[str]
    titles: dict[str, str]
    qrels: dict[str, dict[str, int]]
    splits: dict[str, str]
    useful: set[str]


def judged_homedepot(settings: Any, cfg: Any) -> Judged:
    """The Home Depot products and judgments as the harness reads them."""
    from skulens.data.catalog import read_table
    from skulens.evaluation.harness import query_splits, to_rel

    products = read_table(settings, "homedepot", "products")
    ids = products.column("product_id").to_pylist()
    titles = dict(zip(ids, products.column("title").to_pylist(), strict=True))
    qrels: dict[str, dict[str, int]] = {}
    for row in read_table(settings, "homedepot", "judgments").to_pylist():
        if row["product_id"] in titles:
            qrels.setdefault(row["query"], {})[row["product_id"]] = to_rel(row["grade"], row["source"])
    splits = query_splits(settings, sorted(qrels), cfg.test_fraction, cfg.seed)
    useful = {q for q in qrels if any(g >= 4 for g in qrels[q].values())}
    return Judged(products, ids, titles, qrels, splits, useful)


def retrievers(settings: Any, cfg: Any, data: Judged) -> tuple[Any, Any, str]:
    """(dense, bm25, dense label): the eval's dense encoder over every title in a sharded HNSW index,
    and BM25 with the configured field boosts."""
    from skulens.evaluation.harness import _dense_encoder
    from skulens.retrieval.filters import FilterColumns
    from skulens.retrieval.lexical import BM25Index, LexicalConfig
    from skulens.retrieval.retrievers import DenseRetriever, LexicalRetriever
    from skulens.retrieval.vector_index import ShardedVectorIndex, VectorIndexConfig

    lexical = BM25Index.build(data.products, LexicalConfig.from_settings(settings.retrieval))
    encoder, label = _dense_encoder(settings, cfg.encoder)
    vectors = encoder.encode_texts([data.titles[i] for i in data.ids])
    paths = data.products.column("category_path").to_pylist()
    store = ShardedVectorIndex.build(data.ids, vectors, [p[0] if p else None for p in paths],
                                     VectorIndexConfig(**settings.retrieval.vector.model_dump()), model_version=label,
                                     columns=FilterColumns.from_products(data.products))
    return DenseRetriever(store, encoder), LexicalRetriever(lexical), label
