"""Query expansion mined from chosen products: only vocabulary gaps become rules, and the expansion
clause finds what the query's own words miss without outranking what they match."""

from __future__ import annotations

import pytest

from skulens.retrieval.expansion import QueryExpansion, mine_expansions
from skulens.retrieval.lexical import BM25Index

from .test_lexical import _products


def _pairs() -> list[tuple[str, str]]:
    fridge = [("fridge", "Samsung Refrigerator 25 cu ft"), ("mini fridge", "Compact Refrigerator Black"),
              ("fridge white", "White Refrigerator French Door"), ("fridge", "LG Refrigerator Stainless")]
    drill = [("drill", "Cordless Drill 20V"), ("drill", "Hammer Drill"), ("drill", "Drill Press")] * 2
    other = [("hose", "Garden Hose 50 ft"), ("jacket", "Rain Jacket")] * 6
    return fridge + drill + other


def test_only_words_the_chosen_titles_lack_become_rules():
    rules = mine_expansions(_pairs())
    assert rules["fridge"][0] == "refrigerator"  # every chosen title says refrigerator, none says fridge
    assert "drill" not in rules  # its chosen titles contain it: BM25 already matches
    assert "hose" not in rules and "jacket" not in rules
    # Support: one stray pair is not a rule.
    assert "stray" not in mine_expansions([*_pairs(), ("stray", "Something Else")])


def test_expansion_terms_skip_words_the_query_holds_and_round_trip():
    expansion = QueryExpansion({"fridge": ("refrigerator", "white")}, 0.5)
    assert expansion.terms("white fridge") == ["refrigerator"] and expansion.terms("hose") == []
    assert QueryExpansion.from_dict(expansion.to_dict()) == expansion
    assert not QueryExpansion.from_dict(None).active
    with pytest.raises(ValueError, match="weight"):
        QueryExpansion.from_dict({"weight": -1, "rules": {}})
    with pytest.raises(ValueError, match="list of words"):
        QueryExpansion.from_dict({"weight": 0.5, "rules": {"fridge": 3}})


def test_the_expansion_clause_adds_matches_below_the_queries_own():
    index = BM25Index.build(_products())
    assert index.search("garden hose", k=5)[0][0] == "p3"
    plain = [pid for pid, _ in index.search("drill", k=10)]
    expanded = [pid for pid, _ in index.search("drill", k=10, expansion=["jacket"], expansion_weight=0.2)]
    assert expanded[: len(plain)] == plain and expanded[len(plain):] == ["p4"]  # added, and below
    assert index.search("drill", k=10, expansion=["jacket"]) == index.search("drill", k=10)  # weight 0: off
