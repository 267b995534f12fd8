"""Query spelling: every registered speller, and what the context method adds over frequency."""

from __future__ import annotations

import pytest

from skulens.serving.spelling import SPELLERS, SpellCorrector, make_speller

TITLES = [
    *["Green Outdoor Paint"] * 6, *["Green Garden Hose"] * 5, "Screen Door Kit", "Screen Door Spring",
    "Sliding Screen Door", *["Heat Gun"] * 120, "Measuring Tape Inch Scale", "Hot Glue Gun", "Het Pet Bowl",
    "Exterior Door Slab", "Ceramic Floor Tile 12x12", "Porcelain Tile", "Cordless Drill 20V",
]


@pytest.mark.parametrize("name", [n for n in SPELLERS if n != "off"])
def test_every_speller_fixes_an_unknown_word_and_leaves_numbers_and_codes(name):
    spell = make_speller(name, TITLES)
    assert spell.correct("cordles drill 20v") == ("cordless drill 20v", [("cordles", "cordless")])
    assert spell.correct("3/4 in drill")[1] == []
    assert spell.correct("zzzzzzzz")[1] == []


def test_off_is_no_speller_and_an_unknown_name_is_refused():
    assert make_speller("off", TITLES) is None
    with pytest.raises(ValueError, match="unknown speller 'fancy'"):
        make_speller("fancy", TITLES)


def test_context_picks_the_neighbour_that_goes_with_the_other_words():
    frequency, context = make_speller("frequency", TITLES), make_speller("context", TITLES)
    # "green" is the more frequent neighbour of "sreen"; only "screen" appears with "door".
    assert frequency.correct("sreen door")[0] == "green door"
    assert context.correct("sreen door")[0] == "screen door"


def test_context_corrects_short_words_glued_letters_and_rare_known_words():
    context = make_speller("context", TITLES)
    assert context.correct("screen dor")[0] == "screen door"          # 3 letters, one edit
    assert context.correct("ceramic tle")[0] == "ceramic tile"
    assert context.correct("12innch tape")[0] == "12inch tape"       # letters glued to a number
    assert context.correct("12x12 floor tlie")[0] == "12x12 floor tile"
    # "het" is a word of one title, but "heat" appears with "gun" in 120: it explains the query far better.
    assert context.correct("het gun")[0] == "heat gun"
    # A frequent known word is never replaced, whatever its neighbours.
    assert context.correct("green door")[1] == []
    # Letter runs of 1-3 letters beside digits are codes: left alone.
    assert context.correct("20v drill")[1] == []


def test_frequency_keeps_the_word_by_word_behaviour():
    frequency = make_speller("frequency", TITLES)
    assert frequency.correct("screen dor")[1] == []  # 3 letters: below its minimum length
    assert frequency.correct("het gun")[1] == []     # a known word is left alone


def test_context_postings_are_capped():
    spell = SpellCorrector.from_texts(TITLES, context=True, max_context_texts=3)
    assert spell.method == "context" and spell.postings["green"].tolist() == [0, 1, 2]
    assert spell.frequencies["green"] == 11  # the vocabulary still counts every text
