"""Rescoring the fused candidates: LambdaMART over how each title matches the query.

The weighted fusion gives BM25 and the dense side one share for every candidate of every query.
The rescorer reads more per candidate (its BM25 and dense scores and ranks, both relative to the
query's best; how much of the query its title covers, by words, by IDF mass and by character
trigrams; whether the query's numbers, word pairs and last word appear in it; how long the title
is and where the first match sits) and per query (its length, how rare its words are, how strongly
each side matched) and orders the fused head by a LightGBM LambdaMART model. (Word stems and the
title's agreement with the rest of the fused head were tried as features and did not help on
held-out queries: docs/benchmarks/rescorer.md.)

It is learned for one index version from judged training queries
(``skulens.evaluation.ranking.learn_rescorer``, run by ``build_index``'s learn_ranking and by
``skulens eval``), kept only if it beats the fused order on training queries it was not fitted on,
and stored with the version (``rescorer.txt`` beside ``ranking.json``); the service applies it
through :meth:`skulens.retrieval.ranking.RankingPolicy.rescore`, the same function evaluation
scores. One implementation of the features (:func:`candidate_features`) serves learning and serving.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skulens.retrieval.fusion import Hits

FILE = "rescorer.txt"
IDF_FILE = "rescorer_idf.json"
FEATURES = ("bm25", "dense", "fused", "rank_bm25", "rank_dense", "rank_fused", "bm25_share", "dense_gap",
            "query_words", "title_words", "word_cover", "idf_cover", "last_word_in_title", "query_numbers",
            "number_cover", "pair_cover", "trigram_jaccard", "first_match_at", "query_top_bm25",
            "query_top_dense", "query_mean_idf", "missing_max_idf")
_ABSENT_RANK = 150.0  # a candidate one side did not return ranks below that side's whole list
_WORD = re.compile(r"[a-z0-9]+(?:[./][0-9]+)?")


def words(text: str | None) -> list[str]:
    """Lower-case words (numbers keep their fraction or decimal: ``1/2``, ``0.5``), a plural ``s``
    dropped from words of four letters or more (not ``ss``, not after a digit)."""
    return [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") and not w[-2].isdigit() else w
            for w in _WORD.findall((text or "").lower())]


def _trigrams(text: str | None) -> set[str]:
    joined = "".join((text or "").lower().split())
    return {joined[i:i + 3] for i in range(max(len(joined) - 2, 0))}


class Idf:
    """Inverse document frequency of words over a catalogue's titles (``log(1 + (N - df + 0.5) /
    (df + 0.5))``); a word no title has counts as the rarest."""

    def __init__(self, frequencies: Mapping[str, int], documents: int) -> None:
        self.frequencies, self.documents = dict(frequencies), int(documents)

    @classmethod
    def from_titles(cls, titles: Iterable[str | None]) -> Idf:
        counts: dict[str, int] = {}
        n = 0
        for title in titles:
            n += 1
            for w in set(words(title)):
                counts[w] = counts.get(w, 0) + 1
        return cls(counts, n)

    def __call__(self, word: str) -> float:
        df = self.frequencies.get(word, 0)
        return math.log(1 + (self.documents - df + 0.5) / (df + 0.5))


def candidate_features(query: str, fused: Hits, dense: Hits, lexical: Hits, titles: Mapping[str, str],
                       idf: Callable[[str], float]) -> np.ndarray:
    """The feature matrix (``fused`` candidates x :data:`FEATURES`) of one query. ``dense`` and
    ``lexical``: each side's hits with their scores (a candidate one side did not return has no score
    there: NaN)."""
    bm25 = dict(lexical)
    cosine = dict(dense)
    rank_bm25 = {pid: i for i, (pid, _) in enumerate(lexical)}
    rank_dense = {pid: i for i, (pid, _) in enumerate(dense)}
    asked = words(query)
    asked_set = set(asked)
    asked_idf = {w: idf(w) for w in asked_set}
    total_idf = sum(asked_idf.values()) or 1.0
    numbers = {w for w in asked_set if any(c.isdigit() for c in w)}
    pairs = set(zip(asked, asked[1:], strict=False))
    asked_trigrams = _trigrams(query)
    top_bm25 = max(bm25.values(), default=0.0)
    top_dense = max(cosine.values(), default=np.nan)
    out = np.empty((len(fused), len(FEATURES)), dtype=np.float64)
    for i, (pid, fused_score) in enumerate(fused):
        title = titles.get(pid) or ""
        have = words(title)
        have_set = set(have)
        shared = asked_set & have_set
        missing = [asked_idf[w] for w in asked_set - have_set]
        at = next((j for j, w in enumerate(have) if w in asked_set), None)
        title_trigrams = _trigrams(title)
        out[i] = (
            bm25.get(pid, np.nan), cosine.get(pid, np.nan), fused_score,
            rank_bm25.get(pid, _ABSENT_RANK), rank_dense.get(pid, _ABSENT_RANK), i,
            bm25.get(pid, 0.0) / top_bm25 if top_bm25 > 0 else 0.0,
            cosine[pid] - top_dense if pid in cosine else np.nan,
            len(asked), len(have),
            len(shared) / max(len(asked_set), 1), sum(asked_idf[w] for w in shared) / total_idf,
            float(bool(asked) and asked[-1] in have_set), len(numbers),
            len(numbers & have_set) / len(numbers) if numbers else np.nan,
            len(pairs & set(zip(have, have[1:], strict=False))) / len(pairs) if pairs else np.nan,
            len(asked_trigrams & title_trigrams) / max(len(asked_trigrams | title_trigrams), 1),
            at / max(len(have), 1) if at is not None else 1.0,
            top_bm25, top_dense, total_idf / max(len(asked_set), 1), max(missing, default=0.0),
        )
    return out


def feature_columns(names: Sequence[str]) -> list[int]:
    """The columns of :func:`candidate_features` that hold ``names``; refuses a name it does not compute."""
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ValueError(f"the rescorer was learned on features {list(names)}; this version of skulens does not "
                         f"compute {unknown} (it computes {list(FEATURES)}): relearn the index version's ranking")
    return [FEATURES.index(n) for n in names]


class Rescorer:
    """A LightGBM LambdaMART booster over the named ``features`` (of :data:`FEATURES`; all of them by
    default) that reorders the fused top ``depth``. A version learned on fewer features than this
    skulens computes keeps its own: it loads and scores as it was learned."""

    def __init__(self, booster: Any, depth: int, idf: Idf, features: Sequence[str] = FEATURES) -> None:
        if depth < 1:
            raise ValueError(f"rescore depth must be at least 1, got {depth}")
        self.booster, self.depth, self.idf = booster, int(depth), idf
        self.features = tuple(features)
        columns = feature_columns(self.features)
        self._columns = None if columns == list(range(len(FEATURES))) else columns  # None: every column, in order

    def scores(self, query: str, fused: Hits, dense: Hits, lexical: Hits, titles: Mapping[str, str]) -> np.ndarray:
        """The model's score of each of ``fused`` (higher: better)."""
        if not fused:
            return np.zeros(0)
        return self.predict(candidate_features(query, fused, dense, lexical, titles, self.idf))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The model's scores of rows of :func:`candidate_features` (all its columns; the model reads its own)."""
        if self._columns is not None:
            features = features[:, self._columns]
        return np.asarray(self.booster.predict(features, num_threads=1), dtype=np.float64)

    def rescore(self, query: str, fused: Hits, dense: Hits, lexical: Hits, titles: Mapping[str, str]) -> Hits:
        """``fused`` with its top ``depth`` in the model's order (scores: the model's), the rest as it was."""
        return self.reorder(fused, self.scores(query, fused[:self.depth], dense, lexical, titles))

    def reorder(self, fused: Hits, head_scores: np.ndarray) -> Hits:
        """``fused`` with its top ``depth`` ordered by ``head_scores`` (one per head candidate)."""
        head = fused[:self.depth]
        order = np.argsort(-np.asarray(head_scores), kind="stable")
        return [(head[i][0], float(head_scores[i])) for i in order] + list(fused[self.depth:])

    def save(self, folder: Path) -> Path:
        """The booster (LightGBM's text format) and, beside it, the IDF table its features read."""
        import json

        folder = Path(folder)
        self.booster.save_model(str(folder / FILE))
        (folder / IDF_FILE).write_text(json.dumps({"documents": self.idf.documents,
                                                              "frequencies": self.idf.frequencies}),
                                                  encoding="utf-8")
        return folder / FILE

    @classmethod
    def load(cls, folder: Path, depth: int, features: Sequence[str]) -> Rescorer:
        """The rescorer stored with an index version; refuses one learned on a feature this skulens
        does not compute."""
        import json

        import lightgbm

        feature_columns(features)  # before reading anything
        folder = Path(folder)
        raw = json.loads((folder / IDF_FILE).read_text(encoding="utf-8"))
        return cls(lightgbm.Booster(model_file=str(folder / FILE)), depth,
                   Idf(raw["frequencies"], raw["documents"]), features)
