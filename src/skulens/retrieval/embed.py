"""Batch embedding: reader → mapper → writer (as in clip-retrieval), run locally.

* **reader**: the canonical ``products`` table of a catalogue, in batches;
* **mapper** (:class:`EmbeddingMapper`): title vectors (text tower), image vectors (image tower;
  the served INT8/fp32 ONNX artefact when the export stage left one, else torch) and the **fused
  product vector** ``normalise(w · image + (1 − w) · title)`` with ``w`` the full-title fusion
  weight chosen on validation during training (``bundle meta fusion_weights.full_title``); a
  product without a usable photo gets its title vector as fused vector;
* **writer**: ``embeddings.parquet`` (product_id, shard key, has_image, title/image/fused vectors
  as fixed-size float32 lists) with the model version in the file metadata.

The mapper takes a batch of columns and returns one, so the same object runs locally
(:func:`embed_catalog`) or inside a Spark ``mapInPandas`` job for catalogues beyond one machine
(:mod:`skulens.spark.embed_catalog`, ``spark_jobs/embed_catalog.py``).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from skulens.models.two_tower import ImageError, TwoTower
from skulens.vectors import normalise as _norm


class EmbeddingMapper:
    """Turns a batch of products into title, image and fused vectors."""

    def __init__(self, tower: TwoTower, image_onnx: Path | None = None, fusion_weight: float | None = None) -> None:
        self.tower = tower
        meta = getattr(tower, "meta", {}) or {}
        weights = meta.get("fusion_weights") or {}
        self.fusion_weight = float(fusion_weight if fusion_weight is not None else weights.get("full_title", 0.5))
        self._title_cache: dict[str, np.ndarray] = {}  # catalogues repeat titles (fashion: 30% repeats)
        self.image_session = None
        if image_onnx is not None and Path(image_onnx).is_file():
            from skulens.models.onnx import session

            self.image_session = session(Path(image_onnx))

    def texts(self, titles: list[str]) -> np.ndarray:
        """Title vectors, each distinct title encoded once; with an HF text tower through the trunk
        features (batched by length, padded to the batch's longest title) and the head."""
        import torch

        from skulens.models.features import text_trunk_features

        missing = sorted({t for t in titles if t not in self._title_cache})
        if missing and not self.tower.spec.separable_towers:
            self._title_cache.update(zip(missing, self.tower.encode_texts(missing), strict=True))
        elif missing:
            feats = text_trunk_features(self.tower, missing, batch_size=64, progress=False)
            with torch.inference_mode():
                vectors = self.tower.text_head(torch.from_numpy(feats).to(self.tower.device)).float().cpu().numpy()
            self._title_cache.update(zip(missing, _norm(vectors), strict=True))
        return np.stack([self._title_cache[t] for t in titles]) if titles else \
            np.zeros((0, self.tower.embed_dim), np.float32)

    def images(self, sources: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and a mask of the products whose photo decoded."""
        import torch

        dim = self.tower.embed_dim
        out = np.zeros((len(sources), dim), np.float32)
        ok = np.zeros(len(sources), bool)
        pixels, rows = [], []
        for i, src in enumerate(sources):
            if not src:
                continue
            try:
                pixels.append(self.tower.load_image(src))
                rows.append(i)
            except (ImageError, FileNotFoundError):
                continue  # no usable photo: the product is indexed by its title
        if rows:
            batch = torch.stack(pixels)
            if self.image_session is not None:
                vecs = self.image_session.run(None, {"pixels": batch.numpy()})[0]
            else:
                with torch.inference_mode():
                    vecs = self.tower.model.encode_image(batch.to(self.tower.device), normalize=True).cpu().numpy()
            out[rows] = _norm(vecs)
            ok[rows] = True
        return out, ok

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        title = self.texts(batch["title"])
        image, has_image = self.images(batch["image_uri"])
        fused = title.copy()
        w = self.fusion_weight
        fused[has_image] = _norm(w * image[has_image] + (1 - w) * title[has_image])
        return {"product_id": batch["product_id"], "shard_key": batch["shard_key"], "has_image": has_image,
                "title_vec": title, "image_vec": image, "fused_vec": fused}


class TextMapper:
    """The mapper of a catalogue without photos embedded by a text-only encoder (the fine-tuned
    text-encoder champion): title vectors are the product vectors."""

    fusion_weight = 0.0
    image_session = None

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        if any(batch["image_uri"]):
            raise ValueError("a text-only encoder cannot embed product photos; this catalogue needs the "
                             "two-tower embedder (retrieval.text_encoder: two_tower)")
        title = self.encoder.encode_texts(batch["title"])
        return {"product_id": batch["product_id"], "shard_key": batch["shard_key"],
                "has_image": np.zeros(len(title), bool), "title_vec": title, "image_vec": np.zeros_like(title),
                "fused_vec": title}


def _vectors(arr: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), type=pa.float32()), arr.shape[1])


def embed_catalog(products: pa.Table, mapper: EmbeddingMapper, target: Path, *, model_version: str,
                  shard_level: int = 0, batch_size: int = 256) -> dict[str, Any]:
    """Embed every product of ``products`` into ``target`` (a Parquet file); return a summary.

    ``shard_level``: which level of the category path is the shard key (0 = top category)."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    ids = products.column("product_id").to_pylist()
    titles = products.column("title").to_pylist()
    images = products.column("image_uri").to_pylist()
    paths = products.column("category_path").to_pylist()
    keys = [p[shard_level] if p and len(p) > shard_level else None for p in paths]
    parts: list[dict[str, Any]] = []
    for s in tqdm(range(0, len(ids), batch_size), desc="embedding products", unit="batch",
                  disable=os.environ.get("SKULENS_PROGRESS") == "0"):
        parts.append(mapper({"product_id": ids[s:s + batch_size], "title": titles[s:s + batch_size],
                             "image_uri": images[s:s + batch_size], "shard_key": keys[s:s + batch_size]}))
    cat = {k: (np.concatenate([p[k] for p in parts]) if isinstance(parts[0][k], np.ndarray)
               else list(itertools.chain.from_iterable(p[k] for p in parts))) for k in parts[0]} if parts else {}
    table = pa.table({
        "product_id": pa.array(cat.get("product_id", []), pa.string()),
        "shard_key": pa.array(cat.get("shard_key", []), pa.string()),
        "has_image": pa.array(cat.get("has_image", np.zeros(0, bool))),
        "title_vec": _vectors(cat["title_vec"]), "image_vec": _vectors(cat["image_vec"]),
        "fused_vec": _vectors(cat["fused_vec"]),
    }) if parts else None
    if table is None:
        raise ValueError("the catalogue has no products to embed")
    summary = {"model_version": model_version, "products": len(ids), "with_image": int(cat["has_image"].sum()),
               "dim": int(cat["fused_vec"].shape[1]), "fusion_weight": mapper.fusion_weight,
               "image_engine": "onnx" if mapper.image_session is not None else "torch",
               "seconds": round(time.perf_counter() - started, 1)}
    table = table.replace_schema_metadata({"skulens": json.dumps(summary)})
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target)
    return summary


def read_embeddings(path: Path, column: str = "fused_vec") -> tuple[list[str], np.ndarray, list[str | None]]:
    """(ids, vectors, shard keys) from an embeddings file."""
    table = pq.read_table(path, columns=["product_id", "shard_key", column])  # a file, or a Spark folder
    vec = table.column(column).combine_chunks()
    flat = np.asarray(vec.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    arr = flat.reshape(len(vec), -1) if len(vec) else flat.reshape(0, 0)
    return table.column("product_id").to_pylist(), arr, table.column("shard_key").to_pylist()
