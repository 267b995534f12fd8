"""The ranking steps after retrieval, in one implementation for the service and for evaluation.

A :class:`RankingPolicy` says how dense and lexical candidates are fused (the dense share of the
weighted fusion) and how the cross-encoder reorders the head of the fused list (how deep, and its
share when blended with the fused order). It is *learned* for one catalogue and one index version
(``skulens.evaluation.ranking.learn_ranking``, run by ``build_index`` before it publishes) and
stored with that version as ``ranking.json``; the service loads it with the index, and
``skulens eval`` scores the same steps. A number that was learned is never a literal here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skulens.retrieval.fusion import Hits, weighted

FILE = "ranking.json"


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

    def __post_init__(self) -> None:
        if not 0.0 <= self.fusion_weight <= 1.0 or not 0.0 <= self.rerank_blend <= 1.0:
            raise ValueError(f"fusion_weight and rerank_blend must be in [0, 1]: {self}")
        if self.rerank_depth < 1:
            raise ValueError(f"rerank_depth must be at least 1, got {self.rerank_depth}")

    @property
    def learned(self) -> bool:
        return not self.learned_on.startswith("default")

    def fuse(self, dense: Hits, lexical: Hits) -> Hits:
        """The fused candidate list (one side alone when the other found nothing or did not run)."""
        if not dense or not lexical:
            return list(dense or lexical)
        return weighted(dense, lexical, self.fusion_weight)

    def lexical_decides(self, lexical: Hits, places: int) -> Hits | None:
        """The fused list without the dense side, when the dense side cannot change its first
        ``places`` places; else None.

        With a fusion weight of 0 a dense-only candidate scores 0, below every BM25 hit with a
        positive share of the fused score, and ties are broken the same way either way. So when at
        least ``places`` BM25 hits score above 0, the first ``places`` places of the fusion are the
        lexical list's own, and a search need not encode the query nor search the vectors."""
        if self.fusion_weight != 0.0 or not lexical:
            return None
        fused = weighted([], lexical, 0.0)
        return fused if sum(score > 0 for _, score in fused) >= places else None

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
        return (f"fusion weight {self.fusion_weight:g}, rerank top {self.rerank_depth} with blend "
                f"{self.rerank_blend:g}; {self.learned_on}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RankingPolicy:
        known = {k: raw[k] for k in ("fusion_weight", "rerank_depth", "rerank_blend", "learned_on", "measured")
                 if k in raw}
        return cls(**known)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, default=float), encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: Path) -> RankingPolicy:
        """The policy stored with an index version, or the defaults (saying so) when it has none."""
        path = Path(folder) / FILE
        if not path.is_file():
            return cls()
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
