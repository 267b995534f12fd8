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

Incremental: each row carries a **content key** (title, photo location and, for a photo on this
machine, its size and modification time). Given the previous version's file, :func:`embed_catalog`
copies the vectors of every product whose id and content key are unchanged when that file was made
by the same model version, fusion weight and image engine, and runs the mapper on the rest only: a
nightly rebuild of a catalogue where 1% changed embeds that 1%.
"""

from __future__ import annotations

import hashlib
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


def content_keys(products: pa.Table) -> list[str]:
    """A fingerprint per product of everything its vectors depend on: the title, the photo's
    location and, for a photo file on this machine, its size and modification time (a photo replaced
    in place under the same name is embedded again)."""
    keys = []
    for title, uri in zip(products.column("title").to_pylist(), products.column("image_uri").to_pylist(),
                          strict=True):
        stamp = ""
        if uri and "://" not in uri:
            try:
                info = os.stat(uri)
                stamp = f"{info.st_size}:{info.st_mtime_ns}"
            except OSError:
                stamp = "missing"  # embedded as title-only now; re-embedded once the file appears
        digest = hashlib.blake2b(f"{title}\x1f{uri or ''}\x1f{stamp}".encode(), digest_size=12)
        keys.append(digest.hexdigest())
    return keys


class PriorVectors:
    """The vectors of a previous embeddings file that this build may copy: rows keyed by
    (product id, content key); empty when the file is missing, older than content keys, or made by
    another model version, fusion weight or image engine (``reason`` says which)."""

    def __init__(self, path: Path | None, *, model_version: str, fusion_weight: float, image_engine: str) -> None:
        self.rows: dict[tuple[str, str], int] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.reason = self._load(path, model_version, fusion_weight, image_engine)

    def _load(self, path: Path | None, model_version: str, fusion_weight: float, image_engine: str) -> str:
        if path is None or not Path(path).is_file():
            return "no previous embeddings"
        schema = pq.read_schema(path)
        meta = json.loads((schema.metadata or {}).get(b"skulens", b"{}"))
        wanted = {"model_version": model_version, "fusion_weight": fusion_weight, "image_engine": image_engine}
        changed = [f"{k} {meta.get(k)!r} -> {v!r}" for k, v in wanted.items() if meta.get(k) != v]
        if changed:
            return "previous embeddings made differently: " + "; ".join(changed)
        if "content_key" not in schema.names:
            return "previous embeddings carry no content keys"
        table = pq.read_table(path, columns=["product_id", "content_key", "has_image", *_VECTOR_COLUMNS])
        self.rows = {key: i for i, key in enumerate(zip(table.column("product_id").to_pylist(),
                                                        table.column("content_key").to_pylist(), strict=True))}
        self.arrays = {c: _as_matrix(table.column(c)) for c in _VECTOR_COLUMNS}
        self.arrays["has_image"] = table.column("has_image").to_numpy(zero_copy_only=False).astype(bool)
        return "reused unchanged products"

    def find(self, ids: list[str], keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Positions in ``ids`` that can be copied, and their rows in the previous file."""
        pairs = [(i, self.rows.get((pid, key))) for i, (pid, key) in enumerate(zip(ids, keys, strict=True))]
        hits = [(i, r) for i, r in pairs if r is not None]
        return np.array([i for i, _ in hits], np.int64), np.array([r for _, r in hits], np.int64)


_VECTOR_COLUMNS = ("title_vec", "image_vec", "fused_vec")


def _as_matrix(column: pa.ChunkedArray) -> np.ndarray:
    vec = column.combine_chunks()
    flat = np.asarray(vec.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return flat.reshape(len(vec), -1) if len(vec) else flat.reshape(0, 0)


def _vectors(arr: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), type=pa.float32()), arr.shape[1])


def embed_catalog(products: pa.Table, mapper: EmbeddingMapper, target: Path, *, model_version: str,
                  shard_level: int = 0, batch_size: int = 256, previous: Path | None = None) -> dict[str, Any]:
    """Embed every product of ``products`` into ``target`` (a Parquet file); return a summary.

    ``shard_level``: which level of the category path is the shard key (0 = top category).
    ``previous``: an earlier embeddings file whose vectors are copied for unchanged products
    (:class:`PriorVectors` says when that is allowed); the summary counts ``reused`` and ``embedded``."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    ids = products.column("product_id").to_pylist()
    if not ids:
        raise ValueError("the catalogue has no products to embed")
    titles = products.column("title").to_pylist()
    images = products.column("image_uri").to_pylist()
    paths = products.column("category_path").to_pylist()
    keys = [p[shard_level] if p and len(p) > shard_level else None for p in paths]
    content = content_keys(products)
    engine = "onnx" if mapper.image_session is not None else "torch"
    prior = PriorVectors(previous, model_version=model_version, fusion_weight=mapper.fusion_weight,
                         image_engine=engine)
    copied, rows = prior.find(ids, content)
    out: dict[str, np.ndarray] = {}
    if len(copied):
        out = {c: np.zeros((len(ids), prior.arrays[c].shape[1]), np.float32) for c in _VECTOR_COLUMNS}
        out["has_image"] = np.zeros(len(ids), bool)
        for c in (*_VECTOR_COLUMNS, "has_image"):
            out[c][copied] = prior.arrays[c][rows]
    todo = np.setdiff1d(np.arange(len(ids)), copied)
    for s in tqdm(range(0, len(todo), batch_size), desc="embedding products", unit="batch",
                  disable=os.environ.get("SKULENS_PROGRESS") == "0"):
        at = todo[s:s + batch_size].tolist()
        part = mapper({"product_id": [ids[i] for i in at], "title": [titles[i] for i in at],
                       "image_uri": [images[i] for i in at], "shard_key": [keys[i] for i in at]})
        if not out:
            out = {c: np.zeros((len(ids), part[c].shape[1]), np.float32) for c in _VECTOR_COLUMNS}
            out["has_image"] = np.zeros(len(ids), bool)
        for c in (*_VECTOR_COLUMNS, "has_image"):
            out[c][at] = part[c]
    table = pa.table({
        "product_id": pa.array(ids, pa.string()), "shard_key": pa.array(keys, pa.string()),
        "content_key": pa.array(content, pa.string()), "has_image": pa.array(out["has_image"]),
        **{c: _vectors(out[c]) for c in _VECTOR_COLUMNS},
    })
    summary = {"model_version": model_version, "products": len(ids), "with_image": int(out["has_image"].sum()),
               "dim": int(out["fused_vec"].shape[1]), "fusion_weight": mapper.fusion_weight,
               "image_engine": engine, "reused": int(len(copied)), "embedded": int(len(todo)),
               "reuse": prior.reason, "seconds": round(time.perf_counter() - started, 1)}
    table = table.replace_schema_metadata({"skulens": json.dumps(summary)})
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target)
    return summary


def read_embeddings(path: Path, column: str = "fused_vec") -> tuple[list[str], np.ndarray, list[str | None]]:
    """(ids, vectors, shard keys) from an embeddings file."""
    table = pq.read_table(path, columns=["product_id", "shard_key", column])  # a file, or a Spark folder
    return (table.column("product_id").to_pylist(), _as_matrix(table.column(column)),
            table.column("shard_key").to_pylist())
