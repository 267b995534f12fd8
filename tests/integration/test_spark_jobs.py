"""prepare_catalog and build_pairs on a tiny catalogue whose defects are known (Spark local)."""

from __future__ import annotations

import shutil
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from skulens.settings import load_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_datasets):
    """Publish a tiny catalogue: photo duplicates, bad photos, title duplicates without photos."""
    import os

    from skulens.data.loaders import import_catalog
    from skulens.data.mapping import load_mapping

    root = tmp_path_factory.mktemp("tiny")
    home = root / "home"
    images = root / "images"
    images.mkdir()
    real = shared_datasets / "fashion" / "images"
    shutil.copy(real / "10000.jpg", images / "p1.jpg")
    shutil.copy(real / "10000.jpg", images / "p2.jpg")  # the same photo again: a duplicate
    shutil.copy(real / "10001.jpg", images / "p3.jpg")
    (images / "p4.jpg").write_bytes(b"not a jpeg at all")
    Image.open(real / "10003.jpg").convert("L").save(images / "p5.jpg")
    Image.new("RGB", (32, 32), (200, 10, 10)).save(images / "p6.jpg")
    rows = [
        ("p1", "Blue Denim Shirt", "p1.jpg"), ("p2", "Blue Denim Shirt Copy", "p2.jpg"),
        ("p3", "Red Check Shirt", "p3.jpg"), ("p4", "Broken Photo Shirt", "p4.jpg"),
        ("p5", "Grey Photo Shirt", "p5.jpg"), ("p6", "Tiny Photo Shirt", "p6.jpg"),
        ("p7", "Plain White Oxford Shirt", ""), ("p8", "Plain White Oxford Shirt", ""),
        ("p9", "Green Linen Shirt", ""),
    ]
    # One leaf category for all: near-duplicates are only looked for within a category.
    (root / "products.csv").write_text(
        "sku,name,photo,colour,dept,cat\n" + "".join(f"{a},{b},{c},blue,Apparel,Shirts\n" for a, b, c in rows))
    (root / "mapping.yaml").write_text(
        "catalog: tiny\nsource: products.csv\nimages_dir: images\n"
        "columns: {product_id: sku, title: name, image: photo}\n"
        "category: {columns: [dept, cat]}\nattributes: {colour: colour}\n")
    settings = load_settings("local", env={**os.environ, "SKULENS_HOME": str(home)})
    import_catalog(settings, load_mapping(root / "mapping.yaml"))
    judgments = root / "judgments.parquet"
    pq.write_table(pa.table({"query": ["denim shirt", "denim shirt", "oxford", "linen shirt"],
                             "product_id": ["p1", "p3", "p7", "p9"], "grade": [3.0, 1.0, 3.0, 2.0],
                             "source": ["test"] * 4}), judgments)
    return settings, judgments


@pytest.fixture(scope="module")
def spark(tiny):
    from skulens.spark.session import spark_session

    return spark_session(tiny[0], "tests")


def test_prepare_catalog_validates_photos_and_finds_duplicates(spark, tiny):
    from skulens.spark.prepare_catalog import prepared_store, publish, run_prepare_catalog

    settings, _ = tiny
    summary = run_prepare_catalog(spark, settings, "tiny", "r1")
    assert summary["photo_rejects_by_rule"] == {"photo_undecodable": 1, "photo_not_rgb": 1, "photo_too_small": 1}
    assert summary["duplicate_edges_by_kind"] == {"photo": 1, "title": 1}
    rows = {r["product_id"]: r for r in spark.read.parquet(str(summary["path"]) + "/catalog").collect()}
    assert rows["p2"]["dup_group"] == "p1" and not rows["p2"]["is_canonical"] and rows["p1"]["is_canonical"]
    assert rows["p8"]["dup_group"] == "p7"
    assert rows["p3"]["dup_group"] == "p3"
    assert rows["p4"]["image_uri"] is None  # the broken photo is dropped, the product stays
    assert rows["p1"]["title_norm"] == "blue denim shirt" and rows["p1"]["category_leaf"] == "Shirts"
    assert prepared_store(settings, "tiny").current_id() is None  # staged, not published
    publish(settings, "tiny", "r1")
    assert prepared_store(settings, "tiny").current_id() == "r1"


def test_build_pairs_is_leak_free_and_rerunnable(spark, tiny):
    from skulens.spark.build_pairs import PairOptions, run_build_pairs
    from skulens.spark.prepare_catalog import prepared_store

    settings, judgments = tiny
    prepared = prepared_store(settings, "tiny").current()
    options = PairOptions(shards_per_split=1)
    first = run_build_pairs(spark, settings, "p1", prepared=prepared, judgments=judgments, options=options)
    again = run_build_pairs(spark, settings, "p1", prepared=prepared, judgments=judgments, options=options)
    assert first["image_text_by_split"] == again["image_text_by_split"]  # replaced, not duplicated
    image_text = spark.read.parquet(first["path"] + "/image_text").toPandas()
    # Only canonical products with a valid photo: p1 (p2 is its duplicate) and p3.
    assert set(image_text["product_id"]) == {"p1", "p3"}
    assert set(image_text["view"]) == {"title", "attributes"}
    assert image_text.groupby("dup_group")["split"].nunique().max() == 1
    negatives = spark.read.parquet(first["path"] + "/hard_negatives").toPandas()
    assert {("denim shirt", "p3")} <= set(zip(negatives["anchor"], negatives["negative_product_id"], strict=True))
    members = []
    for shard in first["shards"]:
        with tarfile.open(f"{first['path']}/{shard}") as tar:
            members += tar.getnames()
    assert sorted(members) == ["p1.jpg", "p1.json", "p3.jpg", "p3.json"]


def test_embedder_runs_the_same_mapper_in_spark_as_locally(spark, tiny, tmp_path):
    """Spark mapInPandas and the local runner give the same vectors (tiny random model)."""
    import numpy as np

    from skulens.data.catalog import catalog_dir, read_table
    from skulens.models.two_tower import TwoTower
    from skulens.retrieval.embed import EmbeddingMapper, embed_catalog, read_embeddings
    from skulens.spark.embed_catalog import embed_with_spark

    settings, _ = tiny
    tower = TwoTower.build("skulens-tiny", cache_dir=tmp_path / "cache")
    bundle = tower.save(tmp_path / "bundle")
    local = embed_catalog(read_table(settings, "tiny", "products"), EmbeddingMapper(tower), tmp_path / "local.parquet",
                          model_version="tiny/1")
    summary = embed_with_spark(spark, catalog_dir(settings, "tiny") / "products.parquet", bundle,
                               tmp_path / "spark", model_version="tiny/1", partitions=3, batch_size=2)
    assert summary["products"] == local["products"] == 9 and summary["with_image"] == local["with_image"]
    ids_l, vec_l, keys_l = read_embeddings(tmp_path / "local.parquet")
    ids_s, vec_s, keys_s = read_embeddings(tmp_path / "spark")
    order = [ids_s.index(pid) for pid in ids_l]
    assert [keys_s[i] for i in order] == keys_l
    assert np.allclose(vec_s[order], vec_l, atol=1e-5)


def test_title_join_is_blocked_by_category_and_exact(spark):
    """Equal titles in two categories are never paired (the join key holds the category); the
    similarity is the exact Jaccard of the word sets."""
    from skulens.spark.lsh import title_similarity_join

    frame = spark.createDataFrame([
        ("a", "blue denim shirt", "Shirts"), ("b", "blue denim shirt", "Jeans"),
        ("c", "blue denim shirt slim", "Shirts"), ("d", "red wool scarf", "Shirts"),
    ], ["product_id", "title_norm", "category_leaf"])
    pairs = {(r["datasetA"]["product_id"], r["datasetB"]["product_id"]): round(r["similarity"], 4)
             for r in title_similarity_join(frame, 0.5, tables=8, seed=1).collect()}
    assert pairs == {("a", "c"): 0.75, ("c", "a"): 0.75}


def test_label_propagation_fails_loudly_when_it_does_not_converge(spark):
    from skulens.spark.graph import NotConverged, connected_components

    chain = [(str(i), str(i + 1)) for i in range(12)]  # a path of 13 nodes needs 12 rounds
    nodes = spark.createDataFrame([(str(i),) for i in range(13)], ["id"])
    edges = spark.createDataFrame(chain, ["src", "dst"])
    with pytest.raises(NotConverged, match="did not converge in 3 rounds"):
        connected_components(nodes, edges, max_iterations=3)
    labels = {r["id"]: r["component"] for r in connected_components(nodes, edges, max_iterations=20).collect()}
    assert set(labels.values()) == {"0"}
    assert spark.sparkContext.getCheckpointDir()  # reliable checkpoints, not local ones
