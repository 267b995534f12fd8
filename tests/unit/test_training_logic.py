"""Training helpers that need no model: title degradation, attribute queries, configs, lift rows."""

from __future__ import annotations

import numpy as np
import pytest

from skulens.data.pairs import ProductSet, degrade_title
from skulens.evaluation.embedder import attribute_queries
from skulens.settings import ConfigError
from skulens.training.config import TwoTowerTrainConfig, load_train_config
from skulens.training.two_tower import lift_table


def test_degrade_title_removes_colour_and_gender_words():
    colours = ["navy blue", "blue", "red"]
    assert degrade_title("Turtle Check Men Navy Blue Shirt", colours) == "Turtle Check Shirt"
    assert degrade_title("Women's Red Kurta", colours) == "Kurta"
    assert degrade_title("Bluestone Ring", colours) == "Bluestone Ring"  # whole words only


def _products() -> ProductSet:
    attrs = [{"article_type": "Shirts", "colour": "Blue", "gender": "Men"},
             {"article_type": "Shirts", "colour": "Blue", "gender": "Women"},
             {"article_type": "Shirts", "colour": "Red", "gender": "Men"},
             {"article_type": "Watches", "colour": "Blue", "gender": "Men"},
             {"article_type": "Shirts"}]
    n = len(attrs)
    return ProductSet("test", [f"p{i}" for i in range(n)], [""] * n, [""] * n, [""] * n, [""] * n, attrs)


def test_attribute_queries_are_graded_from_attributes():
    texts, qrels = attribute_queries(_products())
    assert "men blue shirts" in texts
    q = qrels[str(texts.index("men blue shirts"))]
    assert q == {"p0": 3, "p1": 2, "p2": 1, "p4": 1}  # watches are not relevant at all
    assert len(texts) == 4  # the product without colour/gender makes no query


def test_train_configs_load_and_validate(settings):
    for name in ("offline", "tiny", "vit-l-14"):
        assert load_train_config(name, settings).model
    assert load_train_config("offline", settings, {"epochs": 2}).epochs == 2
    with pytest.raises(ConfigError, match="not found"):
        load_train_config("nope", settings)
    with pytest.raises(ConfigError, match="epochs"):
        load_train_config("tiny", settings, {"epochs": 0})


def test_precomputed_features_need_locked_towers():
    with pytest.raises(ValueError, match="precompute_features needs both towers"):
        TwoTowerTrainConfig(model="skulens-offline", precompute_features=True, lock_text=False)


def test_lift_table_names_each_baseline():
    test = {"trained": {"image_only_nDCG@10": 0.5, "degraded_title_fused_nDCG@10": 0.6},
            "untrained_projections": {"image_only_nDCG@10": 0.1},
            "text_only_minilm": {"degraded_title_text_nDCG@10": 0.4}}
    rows = {r["metric"]: r for r in lift_table(test)}
    assert rows["image_only_nDCG@10"]["baseline"] == "untrained_projections"
    assert rows["image_only_nDCG@10"]["delta"] == pytest.approx(0.4)
    assert rows["degraded_title_fused_nDCG@10"]["baseline_metric"] == "degraded_title_text_nDCG@10"
    assert rows["degraded_title_fused_nDCG@10"]["delta"] == pytest.approx(0.2)
    assert rows["full_title_fused_nDCG@10"]["delta"] is None  # missing numbers stay missing
    assert "i2i_P@10_type" not in rows  # no imagenet_trunk baseline given: its rows are left out
    with_trunk = lift_table({**test, "imagenet_trunk": {"i2i_P@10_type": 0.7}})
    assert [r["before"] for r in with_trunk if r["baseline"] == "imagenet_trunk"] == [None, 0.7]


def test_tfidf_display_names_find_the_same_type_and_colour_first():
    from skulens.evaluation.embedder import photo_to_photo, tfidf_vectors

    titles = ["Nike Men Navy Blue Tshirt", "Puma Men Navy Blue Tshirt", "Nike Women Red Heels", "Bata Women Red Heels"]
    vectors = tfidf_vectors(titles)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    assert sims.argmax(axis=1).tolist() == [1, 0, 3, 2]  # shared rare words beat the shared brand
    attrs = [{"article_type": t, "colour": c} for t, c in (("Tshirts", "Navy Blue"), ("Tshirts", "Navy Blue"),
                                                           ("Heels", "Red"), ("Heels", "Red"))]
    products = ProductSet("test", ["a", "b", "c", "d"], ["", "", "", ""], titles, titles, titles, attrs)
    scores = photo_to_photo(products, vectors)
    assert scores["i2i_P@10"] == pytest.approx(0.1)  # one right of ten: the only other match, found
    assert lift_table({"trained": {"i2i_P@10": 0.3}, "tfidf_display_names": scores})[0]["baseline"] == \
        "tfidf_display_names"


def test_listwise_loss_prefers_the_graded_order():
    import torch

    from skulens.training.reranker import _listwise_loss

    grades = torch.tensor([3.0, 1.0, 2.0, 3.0, 1.0])
    queries = ["a", "a", "a", "b", "b"]
    good = _listwise_loss(torch.tensor([2.0, -2.0, 0.0, 1.0, -1.0]), grades, queries, 0.5)
    bad = _listwise_loss(torch.tensor([-2.0, 2.0, 0.0, -1.0, 1.0]), grades, queries, 0.5)
    assert good < bad
    single = _listwise_loss(torch.tensor([1.0]), torch.tensor([3.0]), ["c"], 0.5)
    assert float(single) == 0.0  # a query with one candidate has no order to learn


def test_reranker_subsample_keeps_whole_queries():
    from skulens.training.reranker import _subsample_by_query

    pairs = [(q, f"{q}{i}", "t", 2.0) for q in "abcdef" for i in range(3)]
    picked = _subsample_by_query(pairs, 7, seed=1)
    assert len(picked) == 9 and all(sum(p[0] == q for p in picked) in (0, 3) for q in "abcdef")
