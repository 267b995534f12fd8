"""The ranking steps after retrieval, in one implementation for the service and for evaluation.

A :class:`RankingPolicy` says how dense and lexical candidates are fused (the dense share of the
weighted fusion) and how the cross-encoder reorders the head of the fused list (how deep, and its
share when blended with the fused order). It is *learned* for one catalogue and one index version
(``skulens.evaluation.ranking.learn_ranking``, run by ``build_index`` before it publishes) and
stored with that version as ``ranking.json``; the service loads it with the index, and
``skulens eval`` scores the same steps. A number that was learned is never a literal here.

The fusion weight may be chosen **per query** (:class:`AdaptiveWeight`): a softmax over candidate
weights, read from features of the query and of its lexical hits (length, numbers, sizes, how
strongly and how sharply BM25 matched), learned on training queries and kept only where it beat
the single learned weight on queries it was not fitted on. Its features need the lexical hits but
not the dense ones, so a query whose weight comes out 0 need not be encoded at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from skulens.retrieval.fusion import Hits, weighted

FILE = "ranking.json"


FEATURES = ("log_words", "digit_words", "has_measure", "lexical_hits", "top_score_per_word", "head_flatness",
            "top_gap", "mean_word_length")


def query_features(text: str, lexical: Hits, depth: int = 100) -> np.ndarray:
    """The features :class:`AdaptiveWeight` reads: of the query's words (how many, how many hold a
    digit, whether it names a size or dimension, their mean length) and of its BM25 hits (how many,
    the best score per query word, how flat the first ten are, the gap between the first two)."""
    from skulens.retrieval.normalise import measure_tokens

    words = text.split()
    scores = [s for _, s in lexical]
    top = scores[0] if scores else 0.0
    return np.array([
        np.log1p(len(words)),
        sum(any(c.isdigit() for c in w) for w in words) / max(len(words), 1),
        float(bool(measure_tokens(text))),
        min(len(scores), depth) / depth,
        np.log1p(top / max(len(words), 1)),
        scores[min(9, len(scores) - 1)] / top if top > 0 else 0.0,
        (top - scores[1]) / top if top > 0 and len(scores) > 1 else 1.0 if top > 0 else 0.0,
        sum(map(len, words)) / max(len(words), 1),
    ], dtype=np.float64)


@dataclass(frozen=True)
class AdaptiveWeight:
    """A per-query fusion weight: ``grid[argmax(softmax(standardised features @ coef + bias))]``.

    ``coef`` has one column per candidate weight of ``grid``; ``mean`` and ``scale`` standardise
    the features named by ``features`` (:data:`FEATURES`)."""

    grid: tuple[float, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[tuple[float, ...], ...]
    bias: tuple[float, ...]
    features: tuple[str, ...] = FEATURES

    def __post_init__(self) -> None:
        if tuple(self.features) != FEATURES:
            raise ValueError(f"adaptive fusion was learned on features {list(self.features)}; this version of "
                             f"skulens computes {list(FEATURES)}: relearn the index version's ranking")
        if not all(0.0 <= w <= 1.0 for w in self.grid):
            raise ValueError(f"adaptive fusion weights must be in [0, 1]: {self.grid}")
        if (np.shape(self.coef) != (len(FEATURES), len(self.grid)) or len(self.bias) != len(self.grid)
                or len(self.mean) != len(FEATURES) or len(self.scale) != len(FEATURES)):
            raise ValueError("adaptive fusion: coefficients do not match its features and weights")

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Unnormalised log-probabilities of each candidate weight (rows: queries)."""
        x = (np.atleast_2d(features) - np.asarray(self.mean)) / np.asarray(self.scale)
        return x @ np.asarray(self.coef) + np.asarray(self.bias)

    def weight(self, text: str, lexical: Hits) -> float:
        return float(self.grid[int(np.argmax(self.scores(query_features(text, lexical))[0]))])

    def to_dict(self) -> dict[str, Any]:
        return {k: [list(r) for r in v] if k == "coef" else list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AdaptiveWeight:
        return cls(grid=tuple(raw["grid"]), mean=tuple(raw["mean"]), scale=tuple(raw["scale"]),
                   coef=tuple(tuple(r) for r in raw["coef"]), bias=tuple(raw["bias"]),
                   features=tuple(raw.get("features", FEATURES)))


@dataclass(frozen=True)
class RankingPolicy:
    """``fusion_weight``: dense share of the weighted fusion; ``rerank_depth``: how many fused
    candidates the cross-encoder reorders; ``rerank_blend``: the cross-encoder's share when its
    scores are blended with the fused ones (1: its order alone). ``learned_on`` says where the
    numbers come from (or that they are defaults); ``measured`` keeps what learning saw."""

    fusion_weight: float = 0.5
    rerank_depth: int = 20
    rerank_blend: float = 1.0
    learned_on: str = "default: not learned (no ranking.json for this index version)"
    measured: Mapping[str, Any] = field(default_factory=dict)
    adaptive: AdaptiveWeight | None = None
    # A learned rescorer of the fused head (skulens.retrieval.rescore), stored beside ranking.json.
    rescorer: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fusion_weight <= 1.0 or not 0.0 <= self.rerank_blend <= 1.0:
            raise ValueError(f"fusion_weight and rerank_blend must be in [0, 1]: {self}")
        if self.rerank_depth < 1:
            raise ValueError(f"rerank_depth must be at least 1, got {self.rerank_depth}")

    @property
    def learned(self) -> bool:
        return not self.learned_on.startswith("default")

    def weight_for(self, text: str | None, lexical: Hits) -> float:
        """The dense share for this query: the adaptive choice when the version learned one (and the
        query has text), else the single learned weight."""
        if self.adaptive is None or not text:
            return self.fusion_weight
        return self.adaptive.weight(text, lexical)

    def fuse(self, dense: Hits, lexical: Hits, text: str | None = None) -> Hits:
        """The fused candidate list (one side alone when the other found nothing or did not run);
        ``text``: the query, for a per-query weight."""
        if not dense or not lexical:
            return list(dense or lexical)
        return weighted(dense, lexical, self.weight_for(text, lexical))

    def lexical_decides(self, lexical: Hits, places: int, text: str | None = None) -> Hits | None:
        """The fused list without the dense side, when the dense side cannot change its first
        ``places`` places; else None.

        With a fusion weight of 0 a dense-only candidate scores 0, below every BM25 hit with a
        positive share of the fused score, and ties are broken the same way either way. So when at
        least ``places`` BM25 hits score above 0, the first ``places`` places of the fusion are the
        lexical list's own, and a search need not encode the query nor search the vectors."""
        if not lexical or self.weight_for(text, lexical) != 0.0:
            return None
        fused = weighted([], lexical, 0.0)
        return fused if sum(score > 0 for _, score in fused) >= places else None

    def rescore(self, text: str | None, fused: Hits, dense: Hits, lexical: Hits, titles: Mapping[str, str]) -> Hits:
        """``fused`` with its head in the learned rescorer's order (unchanged without a rescorer or text)."""
        if self.rescorer is None or not text or not fused:
            return list(fused)
        return self.rescorer.rescore(text, fused, dense, lexical, titles)

    def rerank(self, head: Hits, scores: np.ndarray) -> Hits:
        """``head`` (the fused top ``rerank_depth``, with fused scores) reordered by the cross-encoder's
        ``scores``, blended with the fused scores when ``rerank_blend`` < 1. The returned scores are
        the order's own (reranker or blend); read the order, not the scale."""
        scores = np.asarray(scores, dtype=np.float64)
        if len(scores) != len(head):
            raise ValueError(f"{len(scores)} reranker scores for {len(head)} candidates")
        order = np.argsort(-scores, kind="stable")
        reranked = [(head[i][0], float(scores[i])) for i in order]
        if self.rerank_blend < 1.0:
            reranked = weighted(reranked, list(head), self.rerank_blend)
        return reranked

    def describe(self) -> str:
        """One line for responses and reports: the numbers and where they come from."""
        fusion = (f"fusion weight per query (adaptive, one of {', '.join(f'{w:g}' for w in self.adaptive.grid)}; "
                  f"{self.fusion_weight:g} without text)" if self.adaptive is not None
                  else f"fusion weight {self.fusion_weight:g}")
        rescore = f", rescore top {self.rescorer.depth} (LambdaMART)" if self.rescorer is not None else ""
        return (f"{fusion}{rescore}, rerank top {self.rerank_depth} with blend {self.rerank_blend:g}; "
                f"{self.learned_on}")

    def to_dict(self) -> dict[str, Any]:
        # Not asdict: it would deep-copy the rescorer's booster.
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("adaptive", "rescorer")}
        out["measured"] = dict(self.measured)
        if self.adaptive is not None:
            out["adaptive"] = self.adaptive.to_dict()
        if self.rescorer is not None:
            out["rescore"] = {"depth": self.rescorer.depth, "features": list(self.rescorer.features)}
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RankingPolicy:
        known = {k: raw[k] for k in ("fusion_weight", "rerank_depth", "rerank_blend", "learned_on", "measured")
                 if k in raw}
        if raw.get("adaptive"):
            known["adaptive"] = AdaptiveWeight.from_dict(raw["adaptive"])
        return cls(**known)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, default=float), encoding="utf-8")
        if self.rescorer is not None:
            self.rescorer.save(Path(folder))
        return path

    @classmethod
    def load(cls, folder: Path) -> RankingPolicy:
        """The policy stored with an index version, or the defaults (saying so) when it has none."""
        path = Path(folder) / FILE
        if not path.is_file():
            return cls()
        raw = json.loads(path.read_text(encoding="utf-8"))
        policy = cls.from_dict(raw)
        if raw.get("rescore"):
            from skulens.retrieval.rescore import Rescorer

            policy = replace(policy, rescorer=Rescorer.load(Path(folder), raw["rescore"]["depth"],
                                                             raw["rescore"]["features"]))
        return policy
