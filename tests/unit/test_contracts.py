import pyarrow as pa
import pytest

from skulens.data.contracts import CONTRACTS, EVENT_TYPES, EVENTS, ISSUES, PRODUCTS, field_doc


@pytest.mark.parametrize("schema", [PRODUCTS, EVENTS, ISSUES, CONTRACTS["judgments"].schema])
def test_every_field_is_documented(schema):
    for name in schema.names:
        assert len(field_doc(schema, name)) > 10, name


def test_contract_fields_match_the_spec():
    assert PRODUCTS.names == ["product_id", "title", "description", "brand", "category_path",
                              "attributes", "price", "currency", "image_uri", "updated_at"]
    assert CONTRACTS["judgments"].schema.names == ["query", "product_id", "grade", "source"]
    assert EVENTS.names == ["event_id", "ts", "user_id", "session_id", "query", "product_id",
                            "event_type", "position", "experiment", "variant"]
    assert PRODUCTS.field("attributes").type == pa.map_(pa.string(), pa.string())
    assert PRODUCTS.field("category_path").type == pa.list_(pa.string())
    assert EVENT_TYPES == ("impression", "click", "add_to_cart", "purchase")


def test_conform_orders_and_casts_columns():
    table = pa.table({"source": ["x"], "grade": [2], "product_id": ["p"], "query": ["q"]})
    out = CONTRACTS["judgments"].conform(table)
    assert out.schema.names == ["query", "product_id", "grade", "source"]
    assert out.schema.field("grade").type == pa.float64()


def test_conform_refuses_missing_columns_and_nulls():
    with pytest.raises(ValueError, match="columns missing: source"):
        CONTRACTS["judgments"].conform(pa.table({"query": ["q"], "product_id": ["p"], "grade": [1.0]}))
    table = pa.table({"query": [None], "product_id": ["p"], "grade": [1.0], "source": ["s"]})
    with pytest.raises(ValueError, match="judgments.query: nulls"):
        CONTRACTS["judgments"].conform(table)
