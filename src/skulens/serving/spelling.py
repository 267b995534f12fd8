"""Spelling correction from the catalogue's own vocabulary (SymSpell, Damerau-Levenshtein).

Word by word rather than SymSpell's compound mode, so a correction is predictable and reported word
by word. Two methods register by name (:data:`SPELLERS`; ``serving.spelling`` picks one, and the
service and ``skulens eval`` build it with :func:`make_speller`, so what is evaluated is what serves):

* ``frequency``: an unknown word of 4+ letters becomes its closest, most frequent catalogue word
  ("sreen door" -> "green door": green is the more frequent neighbour).
* ``context`` (default): the candidates within the edit distance are scored by how often each
  appears in a title together with the query's other words, so "sreen door" -> "screen door". It
  also corrects 3-letter words ("dor" -> "door", one edit at most), letters glued to a number
  ("1innch" -> "1inch", 4+ letters), and a known but rare word (in <= ``rare`` titles) when a
  neighbour explains the other words much better ("het guns" -> "heat guns").

Numbers, model codes ("20v", "ud40350": letter runs of 1-3 letters beside digits) and 1-2 letter
words are left alone. Measured on held-out Home Depot queries: docs/benchmarks/spelling.md.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_TOKEN = re.compile(r"\S+")

# Scoring of a candidate c for a word of the query (context method): each other query word v adds
# log(1 + titles holding both c and v) x CONTEXT_WEIGHT; c's own title count adds log(1 + df) x
# FREQUENCY_WEIGHT; each edit costs EDIT_COST. Chosen in an exploration on BM25 over the held-out
# queries' seeded typos (the evaluation harness's noise); the training queries, which that exploration
# never saw, show the same gain (docs/benchmarks/spelling.md).
CONTEXT_WEIGHT, FREQUENCY_WEIGHT, EDIT_COST = 0.5, 0.3, 1.5


class SpellCorrector:
    """Corrects the words of a query against a vocabulary (word -> how many texts hold it)."""

    def __init__(self, frequencies: Mapping[str, int], max_edit_distance: int = 2, min_length: int = 4,
                 postings: Mapping[str, np.ndarray] | None = None, rare: int = 3, margin: float = 2.0) -> None:
        from symspellpy import SymSpell

        self.max_edit_distance, self.min_length = max_edit_distance, min_length
        self.frequencies = {w: int(c) for w, c in frequencies.items() if c > 0}
        self.known = set(self.frequencies)
        # With postings (sorted text numbers per word) the candidates are chosen by context.
        self.postings = postings
        self.rare, self.margin = rare, margin
        self._sym = SymSpell(max_dictionary_edit_distance=max_edit_distance, prefix_length=7)
        for word, count in self.frequencies.items():
            self._sym.create_dictionary_entry(word, count)

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_count: int = 1, *, context: bool = False,
                   max_context_texts: int = 200_000, **options: Any) -> SpellCorrector:
        """A corrector whose vocabulary is the words of ``texts`` (titles, attribute values); with
        ``context``, also which texts hold each word (the first ``max_context_texts`` texts: the
        co-occurrence statistics of a large catalogue need only a sample, and memory stays bounded)."""
        counts: Counter[str] = Counter()
        postings: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            if not text:
                continue
            words = {w.lower() for w in _WORD.findall(text) if len(w) >= 2}
            counts.update(words)
            if context and i < max_context_texts:
                for w in words:
                    postings.setdefault(w, []).append(i)
        vocabulary = {w: c for w, c in counts.items() if c >= min_count}
        if not context:
            return cls(vocabulary, **options)
        arrays = {w: np.asarray(p, dtype=np.int32) for w, p in postings.items() if w in vocabulary}
        return cls(vocabulary, postings=arrays, **({"min_length": 3} | options))

    @property
    def method(self) -> str:
        return "context" if self.postings is not None else "frequency"

    def correct(self, query: str) -> tuple[str, list[tuple[str, str]]]:
        """The corrected query and the (original, replacement) pairs, in order."""
        if self.postings is not None:
            return self._correct_in_context(query)
        from symspellpy import Verbosity

        changes: list[tuple[str, str]] = []

        def fix(match: re.Match[str]) -> str:
            token = match.group(0)
            word = token.lower()
            if len(word) < self.min_length or not word.isalpha() or word in self.known:
                return token
            found = self._sym.lookup(word, Verbosity.CLOSEST, max_edit_distance=self.max_edit_distance)
            if not found:
                return token
            changes.append((token, found[0].term))
            return found[0].term

        return _TOKEN.sub(fix, query), changes

    # -- the context method ------------------------------------------------------------------
    def _together(self, a: str, b: str) -> int:
        """How many texts hold both words."""
        pa_, pb = self.postings.get(a), self.postings.get(b)  # type: ignore[union-attr]
        if pa_ is None or pb is None:
            return 0
        small, large = (pa_, pb) if len(pa_) <= len(pb) else (pb, pa_)
        at = np.minimum(np.searchsorted(large, small), len(large) - 1)
        return int(np.count_nonzero(large[at] == small))

    def _score(self, candidate: str, edits: int, context: list[str]) -> float:
        support = sum(math.log1p(self._together(candidate, v)) for v in context)
        return (CONTEXT_WEIGHT * support + FREQUENCY_WEIGHT * math.log1p(self.frequencies.get(candidate, 0))
                - EDIT_COST * edits)

    def _replacement(self, word: str, glued: bool, context: list[str]) -> str | None:
        from symspellpy import Verbosity

        if len(word) < (4 if glued else self.min_length):
            return None  # short letter runs beside digits are model codes and units ("20v", "hd40")
        known = word in self.known
        if known and (not context or self.frequencies[word] > self.rare):
            return None
        reach = 1 if len(word) <= 4 else self.max_edit_distance
        candidates = [(s.term, s.distance) for s in self._sym.lookup(word, Verbosity.ALL, max_edit_distance=reach)
                      if s.term != word]
        if not candidates:
            return None
        scored = [(self._score(term, edits, context), term) for term, edits in candidates]
        best_score, best = max(scored)
        if known and best_score <= self._score(word, 0, context) + self.margin:
            return None  # a real (if rare) word stays unless a neighbour explains the query much better
        return best

    def _correct_in_context(self, query: str) -> tuple[str, list[tuple[str, str]]]:
        runs = list(_WORD.finditer(query))
        words = [m.group(0).lower() for m in runs]
        pieces: list[str] = []
        changes: list[tuple[str, str]] = []
        last = 0
        for i, match in enumerate(runs):
            start, end = match.span()
            glued = (start > 0 and query[start - 1].isdigit()) or (end < len(query) and query[end].isdigit())
            context = [v for j, v in enumerate(words) if j != i and v in self.known]
            fixed = self._replacement(words[i], glued, context)
            if fixed is not None:
                pieces += [query[last:start], fixed]
                changes.append((match.group(0), fixed))
                last = end
        return "".join([*pieces, query[last:]]), changes


SPELLERS: dict[str, Callable[[Iterable[str]], SpellCorrector | None]] = {
    "context": lambda texts: SpellCorrector.from_texts(texts, context=True),
    "frequency": lambda texts: SpellCorrector.from_texts(texts),
    "off": lambda texts: None,
}


def make_speller(name: str, texts: Iterable[str]) -> SpellCorrector | None:
    """The speller ``name`` (``serving.spelling``) over the vocabulary of ``texts``; None for ``off``."""
    if name not in SPELLERS:
        raise ValueError(f"unknown speller {name!r}; known: {', '.join(SPELLERS)}")
    return SPELLERS[name](texts)
