"""Training examples from the data layer: image-text pairs (Parquet or tar shards) + attributes.

One :class:`ProductSet` per split holds, per canonical product with a photo: its image (path or
bytes), its text views (``title``, ``attributes``), a *degraded* title (colour and gender words
removed, as for a product with poor metadata) and the attributes used for graded relevance.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

GENDER_WORDS = ("men", "women", "man", "woman", "boys", "girls", "boy", "girl", "unisex", "kids", "mens", "womens")
SPLITS = ("train", "val", "test")


@dataclass
class ProductSet:
    """Columnar product examples of one split."""

    split: str
    product_ids: list[str]
    images: list[str | bytes]
    titles: list[str]
    attribute_texts: list[str]
    degraded_titles: list[str]
    attributes: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.product_ids)

    def subset(self, limit: int | None, seed: int) -> ProductSet:
        """A seeded random subset of at most ``limit`` products (all when None)."""
        if limit is None or limit >= len(self):
            return self
        keep = sorted(np.random.default_rng(seed).choice(len(self), size=limit, replace=False).tolist())
        return ProductSet(self.split, *([getattr(self, f)[i] for i in keep] for f in (
            "product_ids", "images", "titles", "attribute_texts", "degraded_titles", "attributes")))


def degrade_title(title: str, colours: list[str]) -> str:
    """Remove colour and gender words (``colours`` longest first, e.g. 'navy blue' before 'blue')."""
    words = [re.escape(c) for c in colours] + list(GENDER_WORDS)
    pattern = re.compile(r"\b(?:" + "|".join(words) + r")(?:'s)?\b", re.IGNORECASE)
    return re.sub(r"\s+", " ", pattern.sub(" ", title)).strip()


def _colours(attributes: list[dict[str, str]]) -> list[str]:
    names = {a["colour"].lower() for a in attributes if a.get("colour")}
    return sorted(names, key=lambda c: (-len(c), c))


def _attribute_map(products: pa.Table) -> dict[str, dict[str, str]]:
    ids = products.column("product_id").to_pylist()
    attrs = products.column("attributes").to_pylist()
    return {pid: {k: v for k, v in (a or []) if v} for pid, a in zip(ids, attrs, strict=True)}


def _build(split: str, rows: dict[str, dict], attributes: dict[str, dict[str, str]]) -> ProductSet:
    ids = sorted(rows)
    attrs = [attributes.get(pid, {}) for pid in ids]
    colours = _colours(list(attributes.values()))
    titles = [rows[p]["texts"].get("title", "") for p in ids]
    return ProductSet(
        split=split, product_ids=ids, images=[rows[p]["image"] for p in ids], titles=titles,
        attribute_texts=[rows[p]["texts"].get("attributes", "") for p in ids],
        degraded_titles=[degrade_title(t, colours) for t in titles], attributes=attrs,
    )


def load_from_parquet(pairs_dir: Path, products: pa.Table, split: str) -> ProductSet:
    """Products of ``split`` from ``<pairs_dir>/image_text`` (Hive-partitioned Parquet)."""
    import pyarrow.dataset as ds

    source = pairs_dir / "image_text"
    if not source.is_dir():
        raise FileNotFoundError(f"no image-text pairs at {source}; run the catalog_ingest pipeline first")
    table = ds.dataset(source, partitioning="hive").to_table(
        filter=ds.field("split") == split, columns=["product_id", "image_uri", "view", "text"])
    rows: dict[str, dict] = {}
    for pid, uri, view, text in zip(*(table.column(c).to_pylist() for c in ("product_id", "image_uri", "view", "text")),
                                    strict=True):
        rows.setdefault(pid, {"image": uri, "texts": {}})["texts"][view] = text
    return _build(split, rows, _attribute_map(products))


def load_from_shards(pairs_dir: Path, products: pa.Table, split: str) -> ProductSet:
    """Products of ``split`` from the WebDataset-style tar shards (``<key>.jpg`` + ``<key>.json``)."""
    shards = sorted((pairs_dir / "shards" / split).glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"no shards under {pairs_dir / 'shards' / split}")
    rows: dict[str, dict] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(n for n in members if n.endswith(".json")):
                meta = json.loads(tar.extractfile(members[name]).read())
                image = tar.extractfile(members[name[:-5] + ".jpg"]).read()
                rows[meta["product_id"]] = {"image": image, "texts": meta["texts"]}
    return _build(split, rows, _attribute_map(products))


def load_split(pairs_dir: Path, products: pa.Table, split: str, source: str = "parquet") -> ProductSet:
    """One split from the data layer's Parquet pairs or tar shards."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    loader = {"parquet": load_from_parquet, "shards": load_from_shards}.get(source)
    if loader is None:
        raise ValueError(f"unknown data source {source!r}; expected parquet or shards")
    return loader(pairs_dir, products, split)
