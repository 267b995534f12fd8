"""Lexical retrieval: BM25 (bm25s) over titles, attributes and categories, with field boosts and filters.

One bm25s index per field; a document's score is ``sum(boost[f] * bm25_f(query, doc))``. Filters
are a mask applied to the scores before the top-k is taken, so a filtered search returns the best
matching documents among those that pass, never a truncated list with holes.

An index folder holds ``fields/<name>/`` (bm25s files), ``docs.parquet`` (ids and filter columns)
and ``manifest.json`` (boosts, counts, build time).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from skulens.retrieval.filters import FilterColumns, Filters

DEFAULT_BOOSTS = {"title": 2.0, "attributes": 1.0, "category": 0.5}


@dataclass(frozen=True)
class LexicalConfig:
    boosts: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_BOOSTS))
    k1: float = 1.5
    b: float = 0.75
    stopwords: str = "en"
    # Snowball stemmer language (PyStemmer), or None: "drills" then matches "drill" (measured:
    # docs/benchmarks/lexical.md).
    stemmer: str | None = "english"


def _field_texts(products: pa.Table) -> dict[str, list[str]]:
    attrs = products.column("attributes").to_pylist()
    cats = products.column("category_path").to_pylist()
    return {
        "title": [t or "" for t in products.column("title").to_pylist()],
        "attributes": [" ".join(v for _, v in (a or []) if v) for a in attrs],
        "category": [" ".join(c or []) for c in cats],
    }


def _stemmer(language: str | None):  # noqa: ANN202
    if language is None:
        return None
    import Stemmer

    return Stemmer.Stemmer(language).stemWords


def _tokenize(texts: list[str], config: LexicalConfig):  # noqa: ANN202
    import bm25s

    return bm25s.tokenize(texts, stopwords=config.stopwords, stemmer=_stemmer(config.stemmer), return_ids=False,
                          show_progress=False)


class BM25Index:
    """A built or loaded lexical index."""

    def __init__(self, ids: list[str], fields: dict[str, Any], columns: FilterColumns, config: LexicalConfig) -> None:
        self.ids = ids
        self.fields = fields
        self.columns = columns
        self.config = config

    @classmethod
    def build(cls, products: pa.Table, config: LexicalConfig | None = None) -> BM25Index:
        """Index the canonical ``products`` table."""
        import bm25s

        config = config or LexicalConfig()
        texts = _field_texts(products)
        unknown = sorted(set(config.boosts) - set(texts))
        if unknown:
            raise ValueError(f"unknown lexical field {', '.join(unknown)}; known: {', '.join(texts)}")
        fields = {}
        for name, boost in config.boosts.items():
            if boost <= 0:
                continue
            index = bm25s.BM25(k1=config.k1, b=config.b)
            index.index(_tokenize(texts[name], config), show_progress=False)
            fields[name] = index
        return cls(products.column("product_id").to_pylist(), fields, _columns(products), config)

    def scores(self, query: str, filters: Filters | None = None) -> np.ndarray:
        """BM25 score of every document (filtered-out documents get -inf)."""
        tokens = _tokenize([query], self.config)[0]
        total = np.zeros(len(self.ids), dtype=np.float32)
        if tokens:
            for name, index in self.fields.items():
                vocab = index.vocab_dict
                known = [t for t in tokens if t in vocab]
                if known:
                    total += self.config.boosts[name] * index.get_scores(known)
        mask = self.columns.mask(filters) if filters is not None else None
        if mask is not None:
            total[~mask] = -np.inf
        return total

    def search(self, query: str, k: int = 10, filters: Filters | None = None) -> list[tuple[str, float]]:
        """The ``k`` best (product id, score) with a positive score, best first."""
        scores = self.scores(query, filters)
        k = min(k, len(scores))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.ids[i], float(scores[i])) for i in top if np.isfinite(scores[i]) and scores[i] > 0]

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, index in self.fields.items():
            index.save(str(folder / "fields" / name), show_progress=False)
        pq.write_table(pa.table({
            "product_id": self.ids,
            "categories": [list(c) for c in self.columns.categories],
            "price": self.columns.prices,
            "attributes": [json.dumps(dict(a), sort_keys=True) for a in self.columns.attributes],
        }), folder / "docs.parquet")
        (folder / "manifest.json").write_text(json.dumps({
            "kind": "bm25", "engine": "bm25s", "documents": len(self.ids), "config": asdict(self.config),
            "fields": sorted(self.fields), "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: Path) -> BM25Index:
        import bm25s

        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        config = LexicalConfig(**manifest["config"])
        fields = {name: bm25s.BM25.load(str(folder / "fields" / name), show_progress=False)
                  for name in manifest["fields"]}
        docs = pq.read_table(folder / "docs.parquet")
        columns = FilterColumns(
            categories=docs.column("categories").to_pylist(),
            prices=np.asarray(docs.column("price").to_numpy(zero_copy_only=False), dtype=np.float64),
            attributes=[json.loads(a) for a in docs.column("attributes").to_pylist()])
        return cls(docs.column("product_id").to_pylist(), fields, columns, config)


def _columns(products: pa.Table) -> FilterColumns:
    prices = products.column("price").to_pylist()
    return FilterColumns(
        categories=[list(c or []) for c in products.column("category_path").to_pylist()],
        prices=np.array([np.nan if p is None else p for p in prices], dtype=np.float64),
        attributes=[{k: v for k, v in (a or []) if v} for a in products.column("attributes").to_pylist()],
    )
