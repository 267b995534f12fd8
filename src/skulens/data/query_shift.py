"""**Simulated** search traffic for drift checks: hours of searches (and clicks) over a small
home-improvement vocabulary, and the same traffic after a shift (a category the catalogue lacks
appears, longer typo-heavy queries that find nothing). Used by the drift tests and
``benchmarks/bench_drift.py``; never a figure about real shoppers."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd

VOCABULARY = ("drill", "cordless", "hammer", "paint", "white", "brush", "ladder", "pipe", "copper", "valve",
              "light", "bulb", "led", "door", "hinge", "screw", "wood", "deck", "stain", "tile")
NEW_CATEGORY = ("kayak", "paddle", "tent", "sleeping", "bag", "camping", "lantern")


def simulated_searches(start: datetime, hours: int, rng: np.random.Generator, *, shift: float = 0.0,
                       typos: float = 0.0, per_hour: int = 40) -> pd.DataFrame:
    """Searches (and clicks) from ``start`` for ``hours``; ``shift``: share of queries from the new
    category; ``typos``: share of their words with a doubled last letter."""
    rows = []
    for hour in range(hours):
        for i in range(per_hour):
            words = [str(w) for w in rng.choice(VOCABULARY, rng.integers(1, 4))]
            if rng.random() < shift:
                words = [str(w) for w in rng.choice(NEW_CATEGORY, rng.integers(2, 5))]
            words = [w + w[-1] if rng.random() < typos else w for w in words]
            search_id = f"{start:%Y%m%d%H}-{hour}-{i}"
            ts = start + timedelta(hours=hour, seconds=int(i * 3600 / per_hour))
            found = 0 if words[0].rstrip(words[0][-1]) not in VOCABULARY and words[0] not in VOCABULARY \
                else int(rng.integers(5, 50))
            rows.append({"search_id": search_id, "ts": ts, "event_type": "search", "query": " ".join(words),
                         "results": found, "variant": "control"})
            if found and rng.random() < 0.3:
                rows.append({"search_id": search_id, "ts": ts, "event_type": "click", "query": None,
                             "results": None, "variant": "control"})
    return pd.DataFrame(rows)


def hashed_vectors(texts: list[str], dims: int = 32) -> np.ndarray:
    """Bag-of-words vectors hashed into ``dims`` (a stand-in query encoder for simulated traffic)."""
    import zlib

    vectors = np.zeros((len(texts), dims))
    for row, text in enumerate(texts):
        for word in text.split():
            vectors[row, zlib.crc32(word.encode()) % dims] += 1.0
    return vectors
