"""Photo -> photo evaluation over a pool of held-out photos, the query photo excluded.

Each photo of the pool queries the others; precision@10 counts neighbours of the same article
type, of the same type and colour, and of the same colour. Similarities of several descriptors
fuse as ``w * s_a + (1 - w) * s_b`` (the cosine of the concatenated, weighted unit vectors), ``w``
chosen on a validation pool and applied unchanged to the test pool. A paired bootstrap over the
query photos gives the confidence interval of a difference.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

K = 10
WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def pool_of(product_id: str, test_share: int = 20, val_share: int = 13, salt: str = "pool") -> str:
    """``test``, ``val`` or ``rest``: a stable hash bucket of the product id (shares in percent)."""
    bucket = int(hashlib.sha1(f"{salt}:{product_id}".encode()).hexdigest(), 16) % 100
    return "test" if bucket < test_share else "val" if bucket < test_share + val_share else "rest"


def neighbours(similarity: np.ndarray, k: int = K) -> np.ndarray:
    """Row i: the k most similar other items, best first (the item itself never counts)."""
    sim = np.array(similarity, dtype=np.float32, copy=True)
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(sim) - 1)  # a pool smaller than k + 1: every other item
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def precision_per_query(similarity: np.ndarray, article_types: Sequence[str], colours: Sequence[str],
                        k: int = K) -> dict[str, np.ndarray]:
    """Per query photo: P@k of same type, same type and colour, same colour."""
    types, cols = np.asarray(article_types), np.asarray(colours)
    near = neighbours(similarity, k)
    same_type, same_colour = types[near] == types[:, None], cols[near] == cols[:, None]
    return {"type": same_type.mean(1), "type+colour": (same_type & same_colour).mean(1),
            "colour": same_colour.mean(1)}


def chance_precision(article_types: Sequence[str], colours: Sequence[str]) -> dict[str, float]:
    """Expected P@k of a random order: the share of the other photos that match, averaged."""
    n = len(article_types)
    out = {}
    for name, keys in (("type", list(article_types)), ("colour", list(colours)),
                       ("type+colour", [f"{t}|{c}" for t, c in zip(article_types, colours, strict=True)])):
        counts = Counter(keys)
        out[name] = float(np.mean([(counts[key] - 1) / (n - 1) for key in keys]))
    return out


def choose_weight(similarity_a: np.ndarray, similarity_b: np.ndarray, article_types: Sequence[str],
                  colours: Sequence[str], metric: str = "type+colour", k: int = K) -> tuple[float, dict[float, float]]:
    """The ``w`` of ``w * a + (1 - w) * b`` with the best mean ``metric`` (ties: the larger ``w``,
    closer to ``a`` alone), and the score of every weight tried."""
    scores = {w: float(precision_per_query(w * similarity_a + (1 - w) * similarity_b, article_types,
                                           colours, k)[metric].mean()) for w in WEIGHT_GRID}
    best = max(scores.values())
    return max(w for w, s in scores.items() if s == best), scores


def colour_confusions(similarity: np.ndarray, article_types: Sequence[str], colours: Sequence[str],
                      top: int = 10, k: int = K) -> list[tuple[str, int]]:
    """The colour pairs most often confused: same-type neighbours in the top k with another colour."""
    types, cols = np.asarray(article_types), np.asarray(colours)
    near = neighbours(similarity, k)
    pairs: Counter[str] = Counter()
    for query, row in enumerate(near):
        for other in row:
            if types[other] == types[query] and cols[other] != cols[query]:
                pairs[" / ".join(sorted((str(cols[query]), str(cols[other]))))] += 1
    return pairs.most_common(top)
