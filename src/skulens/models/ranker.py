"""The learned ranker: LambdaMART (LightGBM) over the features a search already has.

One implementation of the features (:func:`ranker_features`) serves training (from the logged
search records: the per-stage scores each result was shown with, and its online features at that
moment) and serving (the same scores, live): what the ranker learns from is what it is served.

Features per result, computed over the candidates of one search: the BM25, dense, fused and
cross-encoder scores (missing where that stage did not score it) and the rank of each among the
candidates; the online features ``ctr_prior`` and ``popularity_7d`` (missing for a product without
events); the share of query words in the title; whether a query word names the product's category.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SCORES = ("bm25", "dense", "fused", "rerank")
ONLINE = ("ctr_prior", "popularity_7d")
FEATURES = (*SCORES, *(f"rank_{s}" for s in SCORES), *ONLINE, "log_popularity_7d", "title_overlap",
            "category_match")
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str | None) -> set[str]:
    """Lower-case words, a plural "s" dropped (shirt matches Shirts)."""
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in _WORD.findall((text or "").lower())}


def _ranks(values: np.ndarray) -> np.ndarray:
    """1 for the highest score among the candidates; NaN where the stage gave none."""
    ranks = np.full(len(values), np.nan)
    present = ~np.isnan(values)
    order = np.argsort(-values[present], kind="stable")
    ranks[np.flatnonzero(present)[order]] = np.arange(1, present.sum() + 1)
    return ranks


def ranker_features(query: str | None, scores: Sequence[Mapping[str, float]], titles: Sequence[str | None],
                    categories: Sequence[Sequence[str] | None]) -> np.ndarray:
    """The feature matrix (candidates x :data:`FEATURES`) of one search's candidates."""
    n = len(scores)
    out = np.full((n, len(FEATURES)), np.nan, dtype=np.float64)
    column = {name: i for i, name in enumerate(FEATURES)}
    for name in SCORES + ONLINE:
        values = np.array([float(s[name]) if s.get(name) is not None else np.nan for s in scores])
        out[:, column[name]] = values
        if name in SCORES:
            out[:, column[f"rank_{name}"]] = _ranks(values)
    out[:, column["log_popularity_7d"]] = np.log1p(out[:, column["popularity_7d"]])
    asked = _words(query)
    for i in range(n):
        if asked:
            out[i, column["title_overlap"]] = len(asked & _words(titles[i])) / len(asked)
            named = set().union(*(_words(c) for c in (categories[i] or ())))
            out[i, column["category_match"]] = float(bool(asked & named))
    return out


class LearnedRanker:
    """A trained LightGBM booster and what it was trained with (features, depth, propensities)."""

    def __init__(self, booster: Any, meta: Mapping[str, Any]) -> None:
        self.booster, self.meta = booster, dict(meta)
        self.depth = int(self.meta.get("depth", 20))
        if list(self.meta.get("features", FEATURES)) != list(FEATURES):
            raise ValueError(f"ranker was trained on features {self.meta.get('features')}, this code computes "
                             f"{list(FEATURES)}; retrain it")

    @classmethod
    def load(cls, folder: Path) -> LearnedRanker:
        import lightgbm

        folder = Path(folder)
        meta = json.loads((folder / "ranker.json").read_text(encoding="utf-8"))
        return cls(lightgbm.Booster(model_str=(folder / "ranker.txt").read_text(encoding="utf-8")), meta)

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ranker.txt").write_text(self.booster.model_to_string(), encoding="utf-8")
        (folder / "ranker.json").write_text(json.dumps(self.meta, indent=2), encoding="utf-8")
        return folder

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(features, num_threads=1), dtype=np.float64)

    def order(self, query: str | None, scores: Sequence[Mapping[str, float]], titles: Sequence[str | None],
              categories: Sequence[Sequence[str] | None]) -> list[int]:
        """Indices of the candidates, best first (ties keep the incoming order)."""
        if not scores:
            return []
        predicted = self.score(ranker_features(query, scores, titles, categories))
        return sorted(range(len(scores)), key=lambda i: (-predicted[i], i))
