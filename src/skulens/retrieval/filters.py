"""Search filters applied *inside* retrieval (as a mask over the corpus), never after truncation."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

KNOWN = ("category", "price_min", "price_max", "attributes")


class FilterError(ValueError):
    """A filter that names an unknown field or has an invalid value."""


@dataclass(frozen=True)
class Filters:
    """``category``: a category name at any level of the path (case-insensitive); ``price_min`` /
    ``price_max``: inclusive bounds (products without a price never match a price filter);
    ``attributes``: exact attribute values (names and values case-insensitive), all of which must
    match."""

    category: str | None = None
    price_min: float | None = None
    price_max: float | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> Filters:
        """From a request's ``filters`` object; unknown keys and bad values raise FilterError."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise FilterError(f"filters must be an object such as {{\"category\": \"shirts\"}}, "
                              f"got {type(raw).__name__} {_short(raw)}")
        raw = dict(raw)
        unknown = sorted(set(raw) - set(KNOWN))
        if unknown:
            raise FilterError(f"unknown filter {', '.join(unknown)}; known: {', '.join(KNOWN)}")
        for bound in ("price_min", "price_max"):
            value = raw.get(bound)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise FilterError(f"filter {bound} must be a non-negative number, got {value!r}")
        if raw.get("price_min") is not None and raw.get("price_max") is not None \
                and raw["price_min"] > raw["price_max"]:
            raise FilterError(f"price_min {raw['price_min']} is above price_max {raw['price_max']}")
        attrs = raw.get("attributes") or {}
        if not isinstance(attrs, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in attrs.items()):
            raise FilterError("filter attributes must map attribute names to strings")
        category = raw.get("category")
        if category is not None and not isinstance(category, str):
            raise FilterError(f"filter category must be a string, got {category!r}")
        return cls(category, raw.get("price_min"), raw.get("price_max"), dict(attrs))

    @property
    def empty(self) -> bool:
        return self.category is None and self.price_min is None and self.price_max is None and not self.attributes


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class FilterColumns:
    """Per-document columns the filters read, aligned with the index's document order."""

    categories: Sequence[Sequence[str]]
    prices: np.ndarray  # float, NaN when unknown
    attributes: Sequence[Mapping[str, str]]

    _postings: dict[tuple[str, ...], np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def _rows(self, key: tuple[str, ...]) -> np.ndarray:
        """Rows holding a category (``("c", name)``) or an attribute value (``("a", name, value)``).

        Built once per column set, on first use: a filtered query then costs a few array
        operations instead of a Python pass over every document."""
        if self._postings is None:
            postings: dict[tuple[str, ...], list[int]] = {}
            for row, path in enumerate(self.categories):
                for name in {c.casefold() for c in path}:
                    postings.setdefault(("c", name), []).append(row)
            for row, attrs in enumerate(self.attributes):
                for name, value in attrs.items():
                    postings.setdefault(("a", name.casefold(), (value or "").casefold()), []).append(row)
            self._postings = {k: np.asarray(v, dtype=np.int64) for k, v in postings.items()}
        return self._postings.get(key, np.empty(0, dtype=np.int64))

    def mask(self, filters: Filters) -> np.ndarray | None:
        """Boolean mask of matching documents, or None when nothing is filtered."""
        if filters.empty:
            return None
        keep = np.ones(len(self.prices), dtype=bool)
        wanted = [("c", filters.category.casefold())] if filters.category is not None else []
        wanted += [("a", name.casefold(), value.casefold()) for name, value in filters.attributes.items()]
        for key in wanted:
            hit = np.zeros(len(self.prices), dtype=bool)
            hit[self._rows(key)] = True
            keep &= hit
        with np.errstate(invalid="ignore"):
            if filters.price_min is not None:
                keep &= self.prices >= filters.price_min
            if filters.price_max is not None:
                keep &= self.prices <= filters.price_max
        return keep

    def take(self, rows: np.ndarray) -> FilterColumns:
        """The columns of the documents at ``rows``, in that order."""
        return FilterColumns([self.categories[i] for i in rows], self.prices[rows],
                             [self.attributes[i] for i in rows])

    @classmethod
    def from_products(cls, products: pa.Table, order: Sequence[str] | None = None) -> FilterColumns:
        """Filter columns of a canonical ``products`` table, in ``order`` (product ids) if given."""
        if order is not None:
            position = {pid: i for i, pid in enumerate(products.column("product_id").to_pylist())}
            missing = [pid for pid in order if pid not in position]
            if missing:
                raise ValueError(f"{len(missing)} indexed products are not in the catalogue, e.g. {missing[0]!r}")
            products = products.take(pa.array([position[pid] for pid in order], pa.int64()))
        prices = products.column("price").to_pylist()
        return cls(
            categories=[list(c or []) for c in products.column("category_path").to_pylist()],
            prices=np.array([np.nan if p is None else p for p in prices], dtype=np.float64),
            attributes=[{k: v for k, v in (a or []) if v} for a in products.column("attributes").to_pylist()])

    def to_table(self) -> pa.Table:
        return pa.table({"categories": [list(c) for c in self.categories], "price": self.prices,
                         "attributes": [json.dumps(dict(a), sort_keys=True) for a in self.attributes]})

    @classmethod
    def from_table(cls, table: pa.Table) -> FilterColumns:
        return cls(categories=table.column("categories").to_pylist(),
                   prices=np.asarray(table.column("price").to_numpy(zero_copy_only=False), dtype=np.float64),
                   attributes=[json.loads(a) for a in table.column("attributes").to_pylist()])
