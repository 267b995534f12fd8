"""Incremental batch embedding: unchanged products copy the previous version's vectors, and only
those; anything their vectors depend on (title, photo file, model, fusion weight) embeds again."""

import os

import numpy as np
import pyarrow as pa
import pytest

from skulens.retrieval.embed import embed_catalog, read_embeddings


class _CountingMapper:
    """Vectors derived from the title and the photo's bytes; records which products it embedded."""

    image_session = None

    def __init__(self, fusion_weight: float = 0.5) -> None:
        self.fusion_weight = fusion_weight
        self.seen: list[str] = []

    def __call__(self, batch):
        self.seen += batch["product_id"]
        n = len(batch["title"])
        title = np.zeros((n, 8), np.float32)
        image = np.zeros((n, 8), np.float32)
        has = np.zeros(n, bool)
        for i, (text, uri) in enumerate(zip(batch["title"], batch["image_uri"], strict=True)):
            title[i, sum(map(ord, text)) % 8] = 1.0
            if uri and os.path.isfile(uri):
                with open(uri, "rb") as f:
                    image[i, len(f.read()) % 8] = 1.0
                has[i] = True
        fused = title.copy()
        fused[has] = self.fusion_weight * image[has] + (1 - self.fusion_weight) * title[has]
        return {"product_id": batch["product_id"], "shard_key": batch["shard_key"], "has_image": has,
                "title_vec": title, "image_vec": image, "fused_vec": fused}


def _products(tmp_path, titles):
    photo = tmp_path / "p0.jpg"
    if not photo.exists():
        photo.write_bytes(b"abc")
    n = len(titles)
    return pa.table({"product_id": [f"p{i}" for i in range(n)], "title": titles,
                     "image_uri": pa.array([str(photo)] + [None] * (n - 1), pa.string()),
                     "category_path": [["a" if i % 2 else "b"] for i in range(n)]})


def test_a_rebuild_embeds_only_the_products_that_changed_and_matches_a_full_embedding(tmp_path):
    titles = [f"title {i}" for i in range(600)]
    first = _CountingMapper()
    summary = embed_catalog(_products(tmp_path, titles), first, tmp_path / "v1.parquet", model_version="m/1",
                            batch_size=64)
    assert summary["embedded"] == 600 and summary["reused"] == 0 and summary["with_image"] == 1
    titles[7] = "a new title"
    changed = _products(tmp_path, titles + ["brand new product"])
    again = _CountingMapper()
    summary = embed_catalog(changed, again, tmp_path / "v2.parquet", model_version="m/1", batch_size=64,
                            previous=tmp_path / "v1.parquet")
    assert sorted(again.seen) == ["p600", "p7"] and summary["reused"] == 599 and summary["embedded"] == 2
    assert summary["with_image"] == 1  # the copied photo product keeps its photo vector
    full = _CountingMapper()
    embed_catalog(changed, full, tmp_path / "full.parquet", model_version="m/1", batch_size=64)
    for column in ("fused_vec", "title_vec", "image_vec"):
        ids, incremental, keys = read_embeddings(tmp_path / "v2.parquet", column)
        full_ids, expected, full_keys = read_embeddings(tmp_path / "full.parquet", column)
        assert ids == full_ids and keys == full_keys
        np.testing.assert_array_equal(incremental, expected)


def test_a_photo_replaced_under_the_same_name_is_embedded_again(tmp_path):
    products = _products(tmp_path, ["x", "y", "z"])
    embed_catalog(products, _CountingMapper(), tmp_path / "v1.parquet", model_version="m/1")
    photo = tmp_path / "p0.jpg"
    photo.write_bytes(b"a different photo")
    os.utime(photo, ns=(10**18, 10**18))  # a new modification time, whatever the clock's resolution
    again = _CountingMapper()
    embed_catalog(products, again, tmp_path / "v2.parquet", model_version="m/1", previous=tmp_path / "v1.parquet")
    assert again.seen == ["p0"]


@pytest.mark.parametrize(("model_version", "weight", "reason"), [
    ("m/2", 0.5, "model_version 'm/1' -> 'm/2'"), ("m/1", 0.3, "fusion_weight 0.5 -> 0.3")])
def test_vectors_of_another_model_or_fusion_weight_are_never_copied(tmp_path, model_version, weight, reason):
    products = _products(tmp_path, ["x", "y", "z"])
    embed_catalog(products, _CountingMapper(), tmp_path / "v1.parquet", model_version="m/1")
    again = _CountingMapper(weight)
    summary = embed_catalog(products, again, tmp_path / "v2.parquet", model_version=model_version,
                            previous=tmp_path / "v1.parquet")
    assert again.seen == ["p0", "p1", "p2"] and summary["reused"] == 0 and reason in summary["reuse"]


def test_embeddings_without_content_keys_or_missing_are_not_reused(tmp_path):
    import pyarrow.parquet as pq

    products = _products(tmp_path, ["x", "y"])
    embed_catalog(products, _CountingMapper(), tmp_path / "v1.parquet", model_version="m/1")
    old = pq.read_table(tmp_path / "v1.parquet")  # as a compacted version or an older release wrote it
    pq.write_table(old.drop(["content_key"]), tmp_path / "old.parquet")
    for previous, reason in ((tmp_path / "old.parquet", "no content keys"), (tmp_path / "nope.parquet", "no previous")):
        again = _CountingMapper()
        summary = embed_catalog(products, again, tmp_path / "v2.parquet", model_version="m/1", previous=previous)
        assert summary["embedded"] == 2 and reason in summary["reuse"]
