"""Search filters applied *inside* retrieval (as a mask over the corpus), never after truncation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KNOWN = ("category", "price_min", "price_max", "attributes")


class FilterError(ValueError):
    """A filter that names an unknown field or has an invalid value."""


@dataclass(frozen=True)
class Filters:
    """``category``: a category name at any level of the path (case-insensitive); ``price_min`` /
    ``price_max``: inclusive bounds (products without a price never match a price filter);
    ``attributes``: exact (case-insensitive) attribute values, all of which must match."""

    category: str | None = None
    price_min: float | None = None
    price_max: float | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> Filters:
        """From a request's ``filters`` object; unknown keys and bad values raise FilterError."""
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(KNOWN))
        if unknown:
            raise FilterError(f"unknown filter {', '.join(unknown)}; known: {', '.join(KNOWN)}")
        for bound in ("price_min", "price_max"):
            value = raw.get(bound)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise FilterError(f"filter {bound} must be a non-negative number, got {value!r}")
        if raw.get("price_min") is not None and raw.get("price_max") is not None \
                and raw["price_min"] > raw["price_max"]:
            raise FilterError(f"price_min {raw['price_min']} is above price_max {raw['price_max']}")
        attrs = raw.get("attributes") or {}
        if not isinstance(attrs, Mapping) or not all(isinstance(v, str) for v in attrs.values()):
            raise FilterError("filter attributes must map attribute names to strings")
        category = raw.get("category")
        if category is not None and not isinstance(category, str):
            raise FilterError(f"filter category must be a string, got {category!r}")
        return cls(category, raw.get("price_min"), raw.get("price_max"), dict(attrs))

    @property
    def empty(self) -> bool:
        return self.category is None and self.price_min is None and self.price_max is None and not self.attributes


@dataclass
class FilterColumns:
    """Per-document columns the filters read, aligned with the index's document order."""

    categories: Sequence[Sequence[str]]
    prices: np.ndarray  # float, NaN when unknown
    attributes: Sequence[Mapping[str, str]]

    def mask(self, filters: Filters) -> np.ndarray | None:
        """Boolean mask of matching documents, or None when nothing is filtered."""
        if filters.empty:
            return None
        keep = np.ones(len(self.prices), dtype=bool)
        if filters.category is not None:
            wanted = filters.category.casefold()
            keep &= np.array([any(c.casefold() == wanted for c in path) for path in self.categories], dtype=bool)
        with np.errstate(invalid="ignore"):
            if filters.price_min is not None:
                keep &= self.prices >= filters.price_min
            if filters.price_max is not None:
                keep &= self.prices <= filters.price_max
        for name, value in filters.attributes.items():
            wanted = value.casefold()
            keep &= np.array([(a.get(name) or "").casefold() == wanted for a in self.attributes], dtype=bool)
        return keep
