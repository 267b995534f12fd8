"""The canonical tables of skulens, as pyarrow schemas.

Every dataset that enters skulens (the bundled fashion and Home Depot data, a user's own
catalogue, click logs) is turned into these tables by a validating reader. Downstream code
(Spark jobs, dbt models, indexes, serving) reads only these tables, so a new data source needs a
mapping, never code changes downstream.

Each field carries its documentation in the schema metadata (``field.metadata[b"doc"]``), so the
Parquet files describe themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase")


def _field(name: str, type_: pa.DataType, doc: str, *, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


PRODUCTS = pa.schema(
    [
        _field("product_id", pa.string(), "Catalogue-unique product key (the source's id, as text).",
               nullable=False),
        _field("title", pa.string(), "Display title. When the source has none it is derived from "
               "attributes and the row is reported under rule title_missing.", nullable=False),
        _field("description", pa.string(), "Free-text description, if the source has one."),
        _field("brand", pa.string(), "Brand name, if the source has one."),
        _field("category_path", pa.list_(pa.string()), "Category path from the root, for example "
               "['Apparel', 'Topwear', 'Shirts']. Empty only for a catalogue without a taxonomy.",
               nullable=False),
        _field("attributes", pa.map_(pa.string(), pa.string()), "Attribute name to value (colour, "
               "gender, season, ...). Empty source values are left out, never stored as ''.",
               nullable=False),
        _field("price", pa.float64(), "Price in `currency`; null when the source has no price."),
        _field("currency", pa.string(), "ISO 4217 code of `price`, for example USD or INR."),
        _field("image_uri", pa.string(), "Absolute path or URI of the product photo; null when the "
               "product has no photo."),
        _field("updated_at", pa.timestamp("us", tz="UTC"), "When the source last changed this "
               "product (UTC).", nullable=False),
    ],
    metadata={"contract": "products", "version": "1"},
)

JUDGMENTS = pa.schema(
    [
        _field("query", pa.string(), "The search text as typed by the user (or derived, see source).",
               nullable=False),
        _field("product_id", pa.string(), "The judged product, a key of the catalogue's products.",
               nullable=False),
        _field("grade", pa.float64(), "Graded relevance; larger is more relevant. Home Depot: 1 "
               "(irrelevant) to 3 (exact), averaged over raters.", nullable=False),
        _field("source", pa.string(), "Where the grade comes from, for example "
               "'homedepot:human' or 'fashion:attribute-derived'.", nullable=False),
    ],
    metadata={"contract": "judgments", "version": "1"},
)

EVENTS = pa.schema(
    [
        _field("event_id", pa.string(), "Unique event key.", nullable=False),
        _field("ts", pa.timestamp("us", tz="UTC"), "Event time (UTC).", nullable=False),
        _field("user_id", pa.string(), "Pseudonymous user key.", nullable=False),
        _field("session_id", pa.string(), "Session key; a session belongs to one user.",
               nullable=False),
        _field("query", pa.string(), "The search text that produced the result list; null for "
               "events outside search (recommendations)."),
        _field("product_id", pa.string(), "The product shown or acted on.", nullable=False),
        _field("event_type", pa.string(), f"One of {', '.join(EVENT_TYPES)}.", nullable=False),
        _field("position", pa.int32(), "1-based rank of the product in the result list."),
        _field("experiment", pa.string(), "A/B experiment name, null outside experiments."),
        _field("variant", pa.string(), "Variant of `experiment` the user was assigned to."),
    ],
    metadata={"contract": "events", "version": "1"},
)

ISSUES = pa.schema(
    [
        _field("table", pa.string(), "The canonical table the record was meant for.", nullable=False),
        _field("source", pa.string(), "The file the record came from.", nullable=False),
        _field("row_number", pa.int64(), "Where the record is: for CSV and JSONL the line of the "
               "file where it starts (a CSV header is line 1); for Parquet the 1-based record index.",
               nullable=False),
        _field("record_key", pa.string(), "The record's key (product id, query), when readable."),
        _field("field", pa.string(), "The canonical field the rule checks.", nullable=False),
        _field("rule", pa.string(), "The rule that failed, for example required, unique, "
               "type:float, range, image_missing.", nullable=False),
        _field("value", pa.string(), "The offending value, truncated to 200 characters."),
        _field("message", pa.string(), "A readable explanation.", nullable=False),
    ],
    metadata={"contract": "issues", "version": "1"},
)
"""Schema of both the rejects table (rows left out) and the defects table (rows kept, flagged)."""


@dataclass(frozen=True)
class Contract:
    """A named canonical table: its schema and the columns that identify a row."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    doc: str

    def conform(self, table: pa.Table) -> pa.Table:
        """Cast ``table`` to this contract (column order, types); raise ValueError naming the problem.

        This is the last check before a table is written: validating readers have already turned
        every bad record into a reject, so a failure here is a bug, not bad input.
        """
        missing = [n for n in self.schema.names if n not in table.column_names]
        if missing:
            raise ValueError(f"{self.name}: columns missing: {', '.join(missing)}")
        table = table.select(self.schema.names)
        for field in self.schema:
            if not field.nullable and table.column(field.name).null_count:
                raise ValueError(f"{self.name}.{field.name}: nulls in a required field")
        try:
            # The contract fixes columns and types; the table's own metadata (its photo folder) stays.
            return table.cast(self.schema).replace_schema_metadata(table.schema.metadata)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"{self.name}: does not fit the contract: {exc}") from exc


CONTRACTS: dict[str, Contract] = {
    "products": Contract("products", PRODUCTS, ("product_id",),
                         "One row per product of a catalogue."),
    "judgments": Contract("judgments", JUDGMENTS, ("query", "product_id"),
                          "Graded relevance of a product for a query."),
    "events": Contract("events", EVENTS, ("event_id",),
                       "Search and recommendation interactions (impressions, clicks, carts, purchases)."),
}


def field_doc(schema: pa.Schema, name: str) -> str:
    """The documentation string of a field."""
    metadata = schema.field(name).metadata or {}
    return metadata.get(b"doc", b"").decode()
