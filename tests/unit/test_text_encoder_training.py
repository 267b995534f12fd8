"""The dense text encoder's training inputs: positives, judged hard negatives, collision-free batches."""

import random

import pytest

from skulens.training.text_encoder import TextEncoderTrainConfig, training_triples, unique_batches

PAIRS = [("drill", "p1", "cordless drill", 3.0), ("drill", "p2", "drill bit set", 2.67),
         ("drill", "p3", "garden hose", 1.0), ("drill", "p4", "hammer", 1.33),
         ("glue", "p5", "wood glue", 2.33), ("glue", "p6", "glue gun", 2.0)]


def test_positives_are_relevant_judgments_and_hard_negatives_judged_low_for_the_same_query():
    triples = training_triples(PAIRS, TextEncoderTrainConfig(min_grade=2.33, max_negative_grade=1.67,
                                                             hard_negatives=1))
    assert sorted((q, t) for q, t, _ in triples) == [("drill", "cordless drill"), ("drill", "drill bit set"),
                                                     ("glue", "wood glue")]
    for query, _, hard in triples:
        # Only titles the judges graded low for this very query: "glue gun" (2.0) is not low enough.
        assert hard == [] if query == "glue" else hard[0] in {"garden hose", "hammer"}
    assert training_triples(PAIRS, TextEncoderTrainConfig(hard_negatives=0))[0][2] == []


def test_batches_never_repeat_a_query_or_a_title():
    triples = [(f"q{i % 5}", f"t{i % 7}", [f"t{(i + 3) % 7}"]) for i in range(40)]
    batches = unique_batches(triples, batch_size=4, rng=random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(40))  # every triple is used once
    for batch in batches:
        queries = [triples[i][0] for i in batch]
        titles = [t for i in batch for t in (triples[i][1], *triples[i][2])]
        assert len(set(queries)) == len(queries) and len(set(titles)) == len(titles)
        assert len(batch) <= 4


def test_config_rejects_a_positive_threshold_off_the_grade_scale():
    with pytest.raises(ValueError):
        TextEncoderTrainConfig(min_grade=4.0)


def test_every_text_encoder_config_in_the_repository_loads(settings):
    from pathlib import Path

    from skulens.training.text_encoder import load_text_encoder_config

    names = sorted(p.stem for p in (Path(settings.project_root) / "configs" / "training").glob("text-encoder*.yaml"))
    assert names == ["text-encoder", "text-encoder-tiny"]
    for name in names:
        cfg = load_text_encoder_config(name, settings)
        assert cfg.name == name and cfg.min_grade > cfg.max_negative_grade


class _Letters:
    """A stand-in text encoder: one normalised vector per title from its first letter."""

    def encode_texts(self, texts):
        import numpy as np

        out = np.zeros((len(texts), 4), np.float32)
        for row, text in enumerate(texts):
            out[row, "abcd".index(text[0])] = 1.0
        return out


def test_text_mapper_indexes_titles_alone_and_refuses_photos(tmp_path):
    import pyarrow as pa

    from skulens.retrieval.embed import TextMapper, embed_catalog, read_embeddings

    products = pa.table({"product_id": ["p1", "p2", "p3"], "title": ["a drill", "b glue", "c hose"],
                         "image_uri": pa.array([None, None, None], pa.string()),
                         "category_path": [["tools"], ["glue"], ["garden"]]})
    summary = embed_catalog(products, TextMapper(_Letters()), tmp_path / "e.parquet", model_version="te/1")
    assert summary["with_image"] == 0 and summary["dim"] == 4 and summary["model_version"] == "te/1"
    ids, vectors, keys = read_embeddings(tmp_path / "e.parquet")
    assert ids == ["p1", "p2", "p3"] and keys == ["tools", "glue", "garden"]
    assert vectors.argmax(axis=1).tolist() == [0, 1, 2]  # the title's vector is the product's
    with_photo = products.set_column(2, "image_uri", pa.array([None, "/photos/p2.jpg", None]))
    with pytest.raises(ValueError, match="two-tower"):
        embed_catalog(with_photo, TextMapper(_Letters()), tmp_path / "f.parquet", model_version="te/1")
