"""Query expansion mined from what shoppers chose: a query word that the products chosen for it
rarely contain ("fridge") gains the words those products share ("refrigerator").

Mined from (query, chosen product title) pairs — what a click log gives; ``bench_expansion`` mines
the training queries' relevant judgments — never from held-out queries. A rule ``word -> (w1, w2)`` is kept when
the word's own chosen titles seldom contain it (a vocabulary gap, not a word BM25 already matches),
``w`` appears in at least ``min_share`` of them, ``w`` is ``min_lift`` times more common there than
in all chosen titles, and the pair was seen ``min_support`` times. The expansion words are added
to the lexical query as a separate, down-weighted clause (``weight``), so products that match the
query's own words usually stay first (a sum of clauses, not a guarantee: at a high weight a product
matching several expansion words can pass a weak match of the query's own words).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_WORD = re.compile(r"[a-z][a-z]+")  # words of two letters or more; numbers and sizes stay literal


def words(text: str) -> set[str]:
    """The lower-case alphabetic words of ``text``."""
    return set(_WORD.findall(text.lower()))


@dataclass(frozen=True)
class QueryExpansion:
    """Mined rules and the weight of their clause in the lexical query."""

    rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    weight: float = 0.0

    def terms(self, text: str) -> list[str]:
        """The expansion words for ``text``: those of its words' rules that it does not already hold."""
        own = words(text)
        return sorted({w for word in own for w in self.rules.get(word, ()) if w not in own})

    @property
    def active(self) -> bool:
        return bool(self.rules) and self.weight > 0

    def to_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "rules": {k: list(v) for k, v in sorted(self.rules.items())}}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> QueryExpansion:
        """The expansion saved by :meth:`to_dict` (None or empty: no expansion)."""
        if not raw:
            return cls()
        weight = float(raw.get("weight", 0.0))
        if not 0.0 <= weight <= 10.0:
            raise ValueError(f"query expansion weight must be within [0, 10], got {weight}")
        rules = raw.get("rules") or {}
        if not isinstance(rules, Mapping) or not all(isinstance(v, list | tuple) for v in rules.values()):
            raise ValueError("query expansion rules must map a word to a list of words")
        return cls({str(k): tuple(str(w) for w in v) for k, v in rules.items()}, weight)


def mine_expansions(pairs: Iterable[tuple[str, str]], *, min_support: int = 3, min_share: float = 0.3,
                    min_lift: float = 5.0, max_self_match: float = 0.5, per_word: int = 2
                    ) -> dict[str, tuple[str, ...]]:
    """Rules ``word -> expansion words`` from (query, chosen title) pairs (see the module's docstring)."""
    asked, matched, together, in_titles = Counter(), Counter(), Counter(), Counter()
    chosen = 0
    for query, title in pairs:
        query_words, title_words = words(query), words(title)
        chosen += 1
        in_titles.update(title_words)
        for word in query_words:
            asked[word] += 1
            matched[word] += word in title_words
            together.update((word, w) for w in title_words - query_words)
    candidates: dict[str, list[tuple[float, str]]] = {}
    for (word, w), count in together.items():
        share = count / asked[word]
        if (count >= min_support and share >= min_share and matched[word] / asked[word] < max_self_match
                and share / (in_titles[w] / chosen) >= min_lift):
            candidates.setdefault(word, []).append((share, w))
    return {word: tuple(w for _, w in sorted(found, key=lambda sw: (-sw[0], sw[1]))[:per_word])
            for word, found in sorted(candidates.items())}
