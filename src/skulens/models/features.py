"""Text-trunk features of a two-tower model (mean-pooled transformer outputs), batched by length:
inference code, used by indexing and serving (query and title vectors) and by training (cached
features for LiT-style head training)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def progress_bar(total: int, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar, off when ``enabled`` is false or ``SKULENS_PROGRESS=0``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled or os.environ.get("SKULENS_PROGRESS") == "0")


def encode_by_length(texts: Sequence[str], encode: Callable[[list[str]], np.ndarray], batch_size: int = 256,
                     desc: str = "texts", progress: bool = False) -> np.ndarray:
    """``encode`` over ``texts`` in batches of ``batch_size``, texts of similar length together (a
    batch pads only to its own longest text; one call over a whole catalogue would hold every
    token's activations at once); rows come back in the order of ``texts``."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), 0), np.float32)
    with progress_bar(len(texts), desc, progress) as bar:
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            vectors = np.asarray(encode([texts[i] for i in rows]), dtype=np.float32)
            if out.shape[1] == 0:
                out = np.zeros((len(texts), vectors.shape[1]), np.float32)
            out[rows] = vectors
            bar.update(len(rows))
    return out


def text_trunk_features(model: Any, texts: Sequence[str], batch_size: int = 256, desc: str = "text",
                        progress: bool = True) -> np.ndarray:
    """Mean-pooled features; texts are batched by length and padded to the longest of their batch
    (the masked mean ignores padding, and titles are far shorter than the context length)."""
    import torch

    def trunk(batch: list[str]) -> np.ndarray:
        return model.text_trunk(model.tokenize_padded(batch)).float().cpu().numpy()

    model.model.text.transformer.eval()
    with torch.inference_mode():
        return encode_by_length(texts, trunk, batch_size, f"text trunk features ({desc})", progress)
