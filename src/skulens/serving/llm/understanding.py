"""What the LLM cascade produces: a validated reading of a shopper's query.

Every tier, from the regular expressions to a hosted model, answers with the same JSON object
(:data:`SCHEMA`). An answer that does not validate, or that names a category or attribute value
the catalogue does not have, is rejected, and the cascade escalates to the next tier.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import jsonschema

INTENTS = ("product", "browse", "gift", "compare", "support", "other")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["query"],
    "additionalProperties": False,
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 200},
        "category": {"type": ["string", "null"], "maxLength": 100},
        "attributes": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 100},
                       "maxProperties": 8},
        "price_min": {"type": ["number", "null"], "minimum": 0},
        "price_max": {"type": ["number", "null"], "minimum": 0},
        "intent": {"enum": [*INTENTS, None]},
    },
}


_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)  # built once: jsonschema.validate re-checks the schema


class InvalidAnswer(ValueError):
    """A tier's answer that is not JSON, breaks :data:`SCHEMA` or names unknown catalogue values."""


@dataclass(frozen=True)
class Vocabulary:
    """The catalogue's category names and attribute values (case-folded), for validation and rules."""

    categories: frozenset[str] = frozenset()
    attributes: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_products(cls, categories: Iterable[Iterable[str]], attributes: Iterable[Mapping[str, str]]) -> Vocabulary:
        cats = {c.casefold() for path in categories for c in path if c}
        values: dict[str, set[str]] = {}
        for attrs in attributes:
            for name, value in attrs.items():
                if value:
                    values.setdefault(name.casefold(), set()).add(value.casefold())
        return cls(frozenset(cats), {k: frozenset(v) for k, v in values.items()})


@dataclass(frozen=True)
class Understanding:
    """A query, rewritten, with the filters and intent read from it."""

    query: str
    category: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    price_min: float | None = None
    price_max: float | None = None
    intent: str | None = None

    def filters(self) -> dict[str, Any]:
        """The filter object (:class:`~skulens.retrieval.filters.Filters` form) this reading implies."""
        raw: dict[str, Any] = {"category": self.category, "price_min": self.price_min, "price_max": self.price_max,
                               "attributes": dict(self.attributes) or None}
        return {k: v for k, v in raw.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "attributes": dict(self.attributes)}


def validate(answer: Mapping[str, Any] | str, vocabulary: Vocabulary | None = None,
             typed: str | None = None) -> Understanding:
    """The :class:`Understanding` in ``answer`` (a mapping or text holding one JSON object).

    With ``typed`` (what the shopper typed), a price limit must be a number the query contains:
    small models invent limits."""
    if isinstance(answer, str):
        answer = first_json_object(answer)
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(answer))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "answer"
        raise InvalidAnswer(f"{where}: {error.message}")
    query = re.sub(r"\s+", " ", answer["query"]).strip()
    if not query:
        raise InvalidAnswer("query: empty after trimming")
    low, high = answer.get("price_min"), answer.get("price_max")
    if low is not None and high is not None and low > high:
        raise InvalidAnswer(f"price_min {low} is above price_max {high}")
    if typed is not None:
        numbers = {float(n) for n in re.findall(r"\d+(?:\.\d+)?", typed)}
        for name, value in (("price_min", low), ("price_max", high)):
            if value is not None and float(value) not in numbers:
                raise InvalidAnswer(f"{name} {value} is not a number in the query")
    category = answer.get("category")
    attributes = {k.casefold(): v for k, v in (answer.get("attributes") or {}).items()}
    if vocabulary is not None:
        if category is not None and category.casefold() not in vocabulary.categories:
            raise InvalidAnswer(f"category {category!r} is not in the catalogue")
        for name, value in attributes.items():
            if value.casefold() not in vocabulary.attributes.get(name, frozenset()):
                raise InvalidAnswer(f"attribute {name}={value!r} is not in the catalogue")
    return Understanding(query, category, attributes, low, high, answer.get("intent"))


def first_json_object(text: str) -> dict[str, Any]:
    """The first complete ``{...}`` object in a model's text (models wrap JSON in prose or fences)."""
    start = text.find("{")
    while start != -1:
        try:
            value, _ = json.JSONDecoder().raw_decode(text[start:])
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    raise InvalidAnswer(f"no JSON object in the answer: {text[:80]!r}")
