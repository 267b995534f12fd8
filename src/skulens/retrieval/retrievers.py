"""Retrievers over a vector store and a lexical index, registered by name.

* ``bm25`` — the lexical index (text queries only);
* ``dense`` — the vector store: a text query through the text tower, a photo through the image
  tower, both together as ``normalise(w * image + (1 - w) * text)``;
* ``hybrid_rrf`` / ``hybrid_weighted`` — dense and lexical candidates (``depth`` each) fused by
  reciprocal rank or by the learned weight (:mod:`skulens.retrieval.fusion`); a photo-only query is
  dense only;
* any retriever can be wrapped by :class:`RerankedRetriever` (cross-encoder over its top ``depth``).

Filters (:class:`~skulens.retrieval.filters.Filters`) and excluded ids (deleted products) go into
every underlying search, so they act inside retrieval; near-duplicates are collapsed after fusion
when ``dedup_threshold`` is set.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from skulens.retrieval.filters import Filters
from skulens.retrieval.fusion import Hits, collapse_near_duplicates, rrf, weighted


@dataclass(frozen=True)
class SearchQuery:
    """A search: text, a photo (path or bytes), or both; optional filters."""

    text: str | None = None
    image: str | bytes | None = None
    image_weight: float = 0.5
    filters: Filters | None = None

    def __post_init__(self) -> None:
        if not (self.text and self.text.strip()) and self.image is None:
            raise ValueError("a search needs a text, a photo or both")
        if not 0.0 <= self.image_weight <= 1.0:
            raise ValueError(f"image_weight must be in [0, 1], got {self.image_weight}")


class VectorStore(Protocol):
    """What a retriever needs from a vector backend (FAISS shards, Milvus)."""

    def search(self, queries: np.ndarray, k: int = 10, shards: Sequence[str] | None = None,
               filters: Filters | None = None, exclude: Collection[str] = ()) -> list[Hits]: ...

    def vectors(self, product_ids: Sequence[str]) -> np.ndarray: ...


class Retriever(Protocol):
    name: str

    def search(self, query: SearchQuery, k: int = 10, exclude: Collection[str] = ()) -> Hits: ...


class _Batched:
    def search_batch(self, queries: Sequence[SearchQuery], k: int = 10) -> list[Hits]:
        """One result list per query (subclasses batch the encoder where they can)."""
        return [self.search(q, k) for q in queries]


class LexicalRetriever(_Batched):
    name = "bm25"

    def __init__(self, index: Any) -> None:
        self.index = index

    def search(self, query: SearchQuery, k: int = 10, exclude: Collection[str] = ()) -> Hits:
        if not query.text:
            return []  # a photo has no words
        return self.index.search(query.text, k=k, filters=query.filters, exclude=exclude)


class DenseRetriever(_Batched):
    name = "dense"

    def __init__(self, store: VectorStore, encoder: Any) -> None:
        self.store, self.encoder = store, encoder

    def query_vector(self, query: SearchQuery) -> np.ndarray:
        from skulens.retrieval.encoders import query_vectors

        return query_vectors(self.encoder, query.text, query.image, query.image_weight)[0]

    def search(self, query: SearchQuery, k: int = 10, exclude: Collection[str] = ()) -> Hits:
        return self.store.search(self.query_vector(query), k=k, filters=query.filters, exclude=exclude)[0]

    def search_batch(self, queries: Sequence[SearchQuery], k: int = 10) -> list[Hits]:
        plain = [q for q in queries if q.image is None and q.filters is None]
        if len(plain) != len(queries):
            return super().search_batch(queries, k)
        return self.store.search(self.encoder.encode_texts([q.text for q in queries]), k=k)


class HybridRetriever(_Batched):
    """Dense + lexical candidates, fused."""

    def __init__(self, dense: DenseRetriever, lexical: LexicalRetriever, method: str = "rrf", weight: float = 0.5,
                 depth: int = 100, rrf_k: int = 60, dedup_threshold: float | None = None) -> None:
        if method not in ("rrf", "weighted"):
            raise ValueError(f"unknown fusion {method!r}; known: rrf, weighted")
        self.dense, self.lexical = dense, lexical
        self.method, self.weight, self.depth, self.rrf_k = method, weight, depth, rrf_k
        self.dedup_threshold = dedup_threshold
        self.name = f"hybrid_{method}"

    def fuse(self, dense: Hits, lexical: Hits) -> Hits:
        if self.method == "rrf":
            return rrf([dense, lexical], k=self.rrf_k)
        return weighted(dense, lexical, self.weight)

    def search(self, query: SearchQuery, k: int = 10, exclude: Collection[str] = ()) -> Hits:
        dense = self.dense.search(query, max(k, self.depth), exclude)
        if not query.text:
            fused = dense
        else:
            fused = self.fuse(dense, self.lexical.search(query, max(k, self.depth), exclude))
        return self._finish(fused, k)

    def _finish(self, fused: Hits, k: int) -> Hits:
        if self.dedup_threshold is not None:
            fused = collapse_near_duplicates(fused[:k * 3], self.dense.store.vectors, self.dedup_threshold)
        return fused[:k]

    def search_batch(self, queries: Sequence[SearchQuery], k: int = 10) -> list[Hits]:
        depth = max(k, self.depth)
        dense = self.dense.search_batch(queries, depth)
        lexical = self.lexical.search_batch(queries, depth)
        return [self._finish(self.fuse(d, lx) if q.text else d, k)
                for q, d, lx in zip(queries, dense, lexical, strict=True)]


class PolicyRetriever(HybridRetriever):
    """Dense + lexical candidates fused as an index version's :class:`RankingPolicy` fuses them (a
    per-query weight when it learned one) and, when it learned a rescorer and ``titles`` are given,
    the fused head rescored: the service's fusion and rescoring, for evaluation."""

    def __init__(self, dense: DenseRetriever, lexical: LexicalRetriever, policy: Any, depth: int = 100,
                 name: str = "hybrid_policy", titles: Mapping[str, str] | None = None) -> None:
        super().__init__(dense, lexical, "weighted", policy.fusion_weight, depth)
        self.policy, self.name, self.titles = policy, name, titles or {}

    def _ranked(self, text: str | None, dense: Hits, lexical: Hits) -> Hits:
        if not text:
            return dense
        fused = self.policy.fuse(dense, lexical, text)
        return self.policy.rescore(text, fused, dense, lexical, self.titles) if self.titles else fused

    def search(self, query: SearchQuery, k: int = 10, exclude: Collection[str] = ()) -> Hits:
        dense = self.dense.search(query, max(k, self.depth), exclude)
        lexical = self.lexical.search(query, max(k, self.depth), exclude) if query.text else []
        return self._finish(self._ranked(query.text, dense, lexical), k)

    def search_batch(self, queries: Sequence[SearchQuery], k: int = 10) -> list[Hits]:
        depth = max(k, self.depth)
        dense = self.dense.search_batch(queries, depth)
        lexical = self.lexical.search_batch(queries, depth)
        return [self._finish(self._ranked(q.text, d, lx), k) for q, d, lx in zip(queries, dense, lexical, strict=True)]


class RerankedRetriever(_Batched):
    """Reorders the top ``depth`` of ``base`` with a scorer f(query text, candidate titles) -> scores.

    ``blend`` < 1 mixes the scorer with the base ranking, ``blend * minmax(scorer) + (1 - blend) *
    minmax(base score)`` (learned on training queries by ``skulens eval``): a cross-encoder trained
    on judged candidates only has not seen the unrelated products a full-corpus search brings up."""

    def __init__(self, base: Retriever, scorer: Callable[[str, list[str]], np.ndarray], titles: Mapping[str, str],
                 depth: int = 50, blend: float = 1.0) -> None:
        self.base, self.scorer, self.titles, self.depth, self.blend = base, scorer, titles, depth, blend
        self.name = f"{base.name}+rerank"

    def search(self, query: SearchQuery, k: int = 10, exclude: Collection[str] = ()) -> Hits:
        return self._rerank(query, self.base.search(query, max(k, self.depth), exclude), k)


    def _rerank(self, query: SearchQuery, hits: Hits, k: int) -> Hits:
        """The top ``depth`` reordered by the scorer, then the rest of ``hits`` in their order (the
        scores of the two parts are on different scales: read the order, not the scores)."""
        head, tail = hits[:self.depth], hits[self.depth:]
        if not query.text or not head:
            return hits[:k]
        scores = np.asarray(self.scorer(query.text, [self.titles.get(pid, "") for pid, _ in head]), dtype=float)
        order = np.argsort(-scores, kind="stable")
        reranked = [(head[i][0], float(scores[i])) for i in order]
        if self.blend < 1.0:
            reranked = weighted(reranked, head, self.blend)
        return (reranked + tail)[:k]

    def search_batch(self, queries: Sequence[SearchQuery], k: int = 10) -> list[Hits]:
        base = self.base.search_batch(queries, max(k, self.depth))
        return [self._rerank(q, hits, k) for q, hits in zip(queries, base, strict=True)]


RETRIEVERS: dict[str, Callable[..., Retriever]] = {
    "bm25": lambda lexical, **_: LexicalRetriever(lexical),
    "dense": lambda store, encoder, **_: DenseRetriever(store, encoder),
    "hybrid_rrf": lambda store, encoder, lexical, **kw: HybridRetriever(
        DenseRetriever(store, encoder), LexicalRetriever(lexical), "rrf", **kw),
    "hybrid_weighted": lambda store, encoder, lexical, **kw: HybridRetriever(
        DenseRetriever(store, encoder), LexicalRetriever(lexical), "weighted", **kw),
}


def make_retriever(name: str, **components: Any) -> Retriever:
    """The retriever registered as ``name`` over ``components`` (store, encoder, lexical, options)."""
    if name not in RETRIEVERS:
        raise ValueError(f"unknown retriever {name!r}; registered: {', '.join(sorted(RETRIEVERS))}")
    return RETRIEVERS[name](**components)
