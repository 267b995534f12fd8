"""BM25 lexical index: field boosts, filters inside retrieval, save/load, readable filter errors."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from skulens.data.contracts import PRODUCTS
from skulens.retrieval.filters import FilterError, Filters
from skulens.retrieval.lexical import BM25Index, LexicalConfig


def _products() -> pa.Table:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = [
        ("p1", "Cordless Drill 20V", ["Tools", "Drills"], {"colour": "yellow", "brand": "dewalt"}, 99.0),
        ("p2", "Hammer Drill Bits Set", ["Tools", "Accessories"], {"colour": "grey"}, 19.0),
        ("p3", "Red Garden Hose", ["Garden", "Hoses"], {"colour": "red"}, 25.0),
        ("p4", "Yellow Rain Jacket", ["Apparel", "Jackets"], {"colour": "yellow"}, None),
        ("p5", "Drill Press Stand", ["Tools", "Drills"], {"colour": "red"}, 150.0),
    ]
    return pa.Table.from_pylist([
        {"product_id": pid, "title": title, "description": None, "brand": None, "category_path": cats,
         "attributes": list(attrs.items()), "price": price, "currency": "USD" if price else None,
         "image_uri": None, "updated_at": now} for pid, title, cats, attrs, price in rows], schema=PRODUCTS)


def test_bm25_ranks_title_matches_and_boosts_fields():
    index = BM25Index.build(_products())
    ids = [pid for pid, _ in index.search("drill", k=10)]
    assert set(ids) == {"p1", "p2", "p5"}
    assert [pid for pid, _ in index.search("drills", k=10)][:1] != []  # stemmed: "drills" finds "drill"
    assert [pid for pid, _ in index.search("yellow", k=1)] == ["p4"]  # title (boost 2) beats attribute only
    assert index.search("", k=5) == [] and index.search("zzzz", k=5) == []


def test_filters_apply_before_the_top_k():
    index = BM25Index.build(_products())
    hits = index.search("drill", k=1, filters=Filters.parse({"price_max": 120, "category": "drills"}))
    assert [pid for pid, _ in hits] == ["p1"]
    red = index.search("drill", k=5, filters=Filters.parse({"attributes": {"colour": "RED"}}))
    assert [pid for pid, _ in red] == ["p5"]
    # Products without a price never match a price filter: the yellow jacket (no price) is left out.
    assert [pid for pid, _ in index.search("yellow", k=5, filters=Filters.parse({"price_min": 0}))] == ["p1"]


def test_saved_index_loads_with_the_same_results(tmp_path):
    index = BM25Index.build(_products(), LexicalConfig(boosts={"title": 1.0, "attributes": 0.5}), tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25")
    assert loaded.documents == 5 and loaded.manifest["documents"] == 5
    for query in ("drill", "red hose", "yellow", "Drills!"):
        assert loaded.search(query, k=5) == index.search(query, k=5)
    with pytest.raises(FileNotFoundError, match="no lexical index here"):
        BM25Index.load(tmp_path / "missing")


def test_query_syntax_is_plain_words_and_excluded_ids_never_return():
    index = BM25Index.build(_products())
    assert index.search("drill AND NOT title:(hose", k=5)  # operators and syntax characters are just words
    ids = [pid for pid, _ in index.search("drill", k=5, exclude={"p1", "p5"})]
    assert ids == ["p2"]


@pytest.mark.parametrize(("raw", "message"), [
    ({"colour": "red"}, "unknown filter colour"),
    ({"price_min": -1}, "non-negative"),
    ({"price_min": 10, "price_max": 5}, "above price_max"),
    ({"attributes": {"colour": 3}}, "map attribute names to strings"),
    ({"category": 7}, "must be a string"),
])
def test_bad_filters_are_named(raw, message):
    with pytest.raises(FilterError, match=message):
        Filters.parse(raw)


def test_unknown_field_boost_is_refused():
    with pytest.raises(ValueError, match="unknown lexical field brandname"):
        BM25Index.build(_products(), LexicalConfig(boosts={"brandname": 1.0}))


def test_external_documents_score_like_indexed_ones():
    """A product scored outside the index gets (about) the score it gets once indexed."""
    from skulens.retrieval.lexical import product_documents

    products = _products()
    index = BM25Index.build(products.slice(0, 4))
    full = BM25Index.build(products)
    outside = [d for d in product_documents(products) if d["id"] == "p5"]
    for query in ("drill press", "red stand", "drills"):
        indexed = dict(full.search(query, k=5)).get("p5", 0.0)
        assert index.score_external(query, outside)[0] == pytest.approx(indexed, rel=0.15)
    assert index.score_external("", outside) == [0.0]
