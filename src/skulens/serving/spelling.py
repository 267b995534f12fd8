"""Spelling correction from the catalogue's own vocabulary (SymSpell, Damerau-Levenshtein).

Word by word rather than SymSpell's compound mode: a known word, a short word, a number or a model
code ("20v", "3/4") is left alone, and only an unknown word is replaced by its closest, most
frequent catalogue word, so the correction is predictable and reported word by word.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_TOKEN = re.compile(r"\S+")


class SpellCorrector:
    def __init__(self, frequencies: Mapping[str, int], max_edit_distance: int = 2, min_length: int = 4) -> None:
        from symspellpy import SymSpell

        self.max_edit_distance, self.min_length = max_edit_distance, min_length
        self.known = {w for w, c in frequencies.items() if c > 0}
        self._sym = SymSpell(max_dictionary_edit_distance=max_edit_distance, prefix_length=7)
        for word, count in frequencies.items():
            if count > 0:
                self._sym.create_dictionary_entry(word, int(count))

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_count: int = 1, **options: int) -> SpellCorrector:
        """A corrector whose vocabulary is the words of ``texts`` (titles, attribute values)."""
        counts = Counter(w.lower() for t in texts if t for w in _WORD.findall(t) if len(w) >= 2)
        return cls({w: c for w, c in counts.items() if c >= min_count}, **options)

    def correct(self, query: str) -> tuple[str, list[tuple[str, str]]]:
        """The corrected query and the (original, replacement) pairs, in order."""
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
