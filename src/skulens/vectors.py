"""Small vector helpers shared by training, evaluation and retrieval."""

from __future__ import annotations

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, contiguous; zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
