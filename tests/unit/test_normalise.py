"""Lexical normalisation: the many ways a size, a dimension or a model number is written meet on one
token, words are only ever added, and an index is queried the way it was built."""

from __future__ import annotations

import datetime as dt
import json
import re

import pyarrow as pa
import pytest

from skulens.data.contracts import PRODUCTS
from skulens.retrieval.lexical import BM25Index, LexicalConfig
from skulens.retrieval.normalise import NORMALISERS, canonical_number, measure_tokens, measures, normaliser


@pytest.mark.parametrize(("forms", "token"), [
    (["1/2 in. pipe", "1/2 inch pipe", "0.5 in pipe", "1/2' pipe", '1/2" pipe', ".5in pipe"], "0p5in"),
    (["1-1/2 in. PVC", "1 1/2 in pvc", "1.5 inches pvc"], "1p5in"),
    (["18-Volt drill", "18v drill", "18 volt drill", "18 Volts"], "18v"),
    (["Whirlpool 1.9 cu. ft. microwave", "1.9 cu ft microwave", "1.9 cubic feet"], "1p9cuft"),
    (["15,000 BTU", "15000 btu"], "15000btu"),
    (["2 in. x 4 in. x 8 ft. stud", "2x4 stud", "2 x 4 lumber"], "2x4"),
    (["BEHR UD-40350 vacuum", "ud40350"], "ud40350"),
    (["5-Piece patio set", "5 piece patio", "5 pc patio"], "5piece"),
])
def test_every_way_of_writing_it_meets_on_one_token(forms, token):
    for form in forms:
        assert token in measures(form).lower().split(), (form, measure_tokens(form))


def test_unlike_quantities_stay_apart():
    assert "0p5in" not in measure_tokens("5 in. hose")
    assert "0p5in" not in measure_tokens("1/2 ft. hose")
    assert not {t for t in measure_tokens("5w20 motor oil") if t.endswith("w")}  # an oil grade, not watts
    assert measure_tokens("2 2/1 exterior screws") == []  # a typo is not the number 4
    assert canonical_number("3/0") is None and canonical_number("3/4") == "0p75"


@pytest.mark.parametrize("text", ["1/2 in. x 12 in. black steel pipe", "dewalt 18v 2 tool kit", "4shelves",
                                  "cr123a battery", "", "navy blue shirt for men"])
def test_words_are_only_ever_added(text):
    words = re.findall(r"\w+", text.lower())
    out = re.findall(r"\w+", measures(text).lower())
    assert out[:len(words)] == words


def _products(titles: list[str]) -> pa.Table:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return pa.Table.from_pylist([
        {"product_id": f"p{i}", "title": title, "description": None, "brand": None, "category_path": ["Plumbing"],
         "attributes": [], "price": 1.0, "currency": "USD", "image_uri": None, "updated_at": now}
        for i, title in enumerate(titles)], schema=PRODUCTS)


TITLES = ["Charlotte Pipe 1/2 in. x 10 ft. PVC Schedule 40 Pipe",  # the one asked for
          "Charlotte Pipe 2 in. x 10 ft. PVC Schedule 40 Pipe Pipe Pipe",
          "Everbilt 5 in. Pipe Clamp", "Pipe Wrench 10 in."]


def test_the_index_finds_the_size_however_the_shopper_writes_it(tmp_path):
    plain = BM25Index.build(_products(TITLES))
    normalised = BM25Index.build(_products(TITLES), LexicalConfig(normaliser="measures"), folder=tmp_path / "lex")
    for query in ("0.5 inch pvc pipe", "1/2' pvc pipe", "1/2 in pvc"):
        assert normalised.search(query, k=1)[0][0] == "p0", query
    # Without normalisation the words "1" and "2" or "0" and "5" decide it (or nothing does).
    assert [pid for pid, _ in plain.search("0.5 inch pvc pipe", k=1)] != ["p0"]
    reloaded = BM25Index.load(tmp_path / "lex")
    assert reloaded.config.normaliser == "measures"
    assert reloaded.search("1/2' pvc pipe", k=1) == normalised.search("1/2' pvc pipe", k=1)
    # Live updates (documents outside the index) are normalised the same way.
    from skulens.retrieval.lexical import product_documents

    outside = list(product_documents(_products(TITLES)))[:1]
    assert normalised.score_external("0.5 inch pvc pipe", outside)[0] > 0
    assert plain.score_external("0.5 inch pvc pipe", outside)[0] < normalised.score_external(
        "0.5 inch pvc pipe", outside)[0]


def test_an_index_built_before_normalisation_is_queried_as_it_was_built(tmp_path):
    BM25Index.build(_products(TITLES), LexicalConfig(), folder=tmp_path / "old")
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    manifest["config"].pop("normaliser")  # as written before the field existed
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    assert BM25Index.load(tmp_path / "old").config.normaliser == "none"


def test_settings_name_only_registered_normalisers_and_unknown_ones_are_refused():
    from typing import get_args

    from skulens.settings import RetrievalSettings

    assert set(get_args(RetrievalSettings.model_fields["lexical_normaliser"].annotation)) == set(NORMALISERS)
    with pytest.raises(ValueError, match="unknown lexical normaliser 'stems'.*known: measures, none"):
        normaliser("stems")
    with pytest.raises(ValueError, match="unknown lexical normaliser"):
        BM25Index.build(_products(TITLES), LexicalConfig(normaliser="stems"))
