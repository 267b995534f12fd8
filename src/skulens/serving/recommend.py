"""Recommendations from the published index: similar products (a product's own photo-and-title
vector as the query) and next products for a session (a recency-weighted mean of the session's
product vectors). A session with no known product is a cold start: the most popular products of
the requested category from the click log, or, for a catalogue with no click log, the products
most typical of the category (nearest its mean vector); the response names which."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skulens.serving.pipeline import RequestError
from skulens.streaming.features import EVENT_WEIGHTS
from skulens.vectors import normalise


def popularity_from_events(events_root: Path) -> dict[str, float]:
    """Weighted interactions per product (click 1, add-to-cart 3, purchase 5) in the current
    version of a catalogue's events; empty when there is no click log."""
    import pyarrow.dataset as ds

    from skulens.storage import VersionedDir

    current = VersionedDir(events_root).current() if events_root.is_dir() else None
    if current is None:
        return {}
    table = ds.dataset(current, format="parquet", partitioning="hive").to_table(columns=["product_id", "event_type"])
    scores: dict[str, float] = {}
    for pid, kind in zip(table.column("product_id").to_pylist(), table.column("event_type").to_pylist(), strict=True):
        weight = EVENT_WEIGHTS.get(kind)
        if weight:
            scores[pid] = scores.get(pid, 0.0) + weight
    return scores


class Recommender:
    """``store``: ``vectors(ids)`` and ``search(vectors, k, filters=, exclude=)``; ``categories``:
    product id -> category path; ``popularity``: product id -> score (may be empty)."""

    def __init__(self, store: Any, titles: Mapping[str, str], categories: Mapping[str, Sequence[str]],
                 popularity: Mapping[str, float] | None = None, half_life: float = 2.0, features: Any = None) -> None:
        self.store, self.titles, self.categories = store, titles, categories
        self.features = features  # the online feature cache: live popularity for cold starts
        self.popularity = dict(popularity or {})
        self.half_life = half_life
        self._typical: dict[str, list[str]] = {}

    def _items(self, hits: Sequence[tuple[str, float]], k: int) -> list[dict[str, Any]]:
        return [{"product_id": pid, "title": self.titles.get(pid), "score": round(float(s), 5)} for pid, s in hits[:k]]

    def _known(self, product_id: str) -> bool:
        return product_id in self.titles

    def similar(self, product_id: str, k: int = 10, filters: Any = None) -> dict[str, Any]:
        """Products nearest to ``product_id``'s own vector (photo and title fused), itself excluded."""
        if not self._known(product_id):
            raise RequestError(f"unknown product_id {product_id!r}")
        vector = self.store.vectors([product_id])
        hits = self.store.search(vector, k=k, filters=filters, exclude={product_id})[0]
        return {"product_id": product_id, "items": self._items(hits, k), "source": "vector"}

    def session(self, product_ids: Sequence[str], k: int = 10, category: str | None = None,
                filters: Any = None) -> dict[str, Any]:
        """Next products after a session's recent products (oldest first, most recent last)."""
        known = [pid for pid in product_ids if self._known(pid)]
        unknown = [pid for pid in product_ids if not self._known(pid)]
        seen = set(product_ids)
        if known:
            vectors = self.store.vectors(known)
            ages = np.arange(len(known))[::-1]  # the most recent product has age 0
            weights = 0.5 ** (ages / self.half_life)
            query = normalise((weights[:, None] * vectors).sum(axis=0, keepdims=True))
            hits = self.store.search(query, k=k, filters=filters, exclude=seen)[0]
            return {"items": self._items(hits, k), "source": "session_vector", "unknown": unknown}
        if category is None:
            raise RequestError("cold start: the session has no known product; send a category for popular products")
        wanted = category.casefold()
        members = [pid for pid, path in self.categories.items() if any(c.casefold() == wanted for c in path)]
        if not members:
            raise RequestError(f"unknown category {category!r}")
        live = self._live_popularity(members)
        if live:
            ranked = sorted((p for p in members if p not in seen), key=lambda p: (-live.get(p, 0.0), p))[:k]
            items = [{"product_id": pid, "title": self.titles.get(pid), "score": live.get(pid, 0.0)} for pid in ranked]
            return {"items": items, "source": "popular_in_category (online, 7 days)", "unknown": unknown}
        if self.popularity:
            ranked = sorted((p for p in members if p not in seen), key=lambda p: (-self.popularity.get(p, 0.0), p))[:k]
            items = [{"product_id": pid, "title": self.titles.get(pid), "score": self.popularity.get(pid, 0.0)}
                     for pid in ranked]
            return {"items": items, "source": "popular_in_category", "unknown": unknown}
        return {"items": [{"product_id": pid, "title": self.titles.get(pid), "score": score}
                          for pid, score in self._most_typical(category, members) if pid not in seen][:k],
                "source": "typical_in_category (no click log)", "unknown": unknown}

    def _live_popularity(self, members: list[str]) -> dict[str, float]:
        """7-day popularity of ``members`` from the online features (empty when none has any)."""
        if self.features is None or self.features.status() is not None:
            return {}
        found = {}
        for pid in members:
            features = self.features.lookup(f"product:{pid}")
            if features and features.get("popularity_7d"):
                found[pid] = float(features["popularity_7d"])
        return found

    def _most_typical(self, category: str, members: list[str]) -> list[tuple[str, float]]:
        key = category.casefold()
        if key not in self._typical:
            sample = members[:20_000]
            vectors = self.store.vectors(sample)
            scores = vectors @ normalise(vectors.mean(axis=0, keepdims=True))[0]
            order = np.argsort(-scores)[:200]
            self._typical[key] = [(sample[i], round(float(scores[i]), 5)) for i in order]
        return self._typical[key]
