"""Column mappings: how a user's catalogue file maps onto the ``products`` contract.

A mapping is a small YAML file (see ``configs/mappings/example.yaml``)::

    catalog: mystore                 # name of the catalogue (folder under SKULENS_HOME/tables)
    source: products.csv             # CSV, Parquet or JSONL (relative to the mapping file)
    images_dir: images               # photo folder (relative to the mapping file), optional
    columns:                         # canonical field -> source column
      product_id: sku
      title: name
      description: long_text
      brand: brand
      price: price
      currency: currency
      image: photo_file              # a file name under images_dir, a path, or a URL
      updated_at: modified
    category: {columns: [dept, category]}   # or {column: path, separator: ">"}
    attributes: {colour: color, gender: gender}
    defaults: {currency: USD}
    image_pattern: "{product_id}.jpg"       # when there is no image column
    title_template: "{brand} {colour} {category}"   # builds a title when the source has none

The built-in loaders (fashion) are mappings too, so every catalogue goes through one validating
path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PRODUCT_COLUMNS = ("product_id", "title", "description", "brand", "price", "currency", "image",
                   "updated_at")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class MappingError(ValueError):
    """A mapping file is invalid or does not fit its source file."""


class CategoryMapping(BaseModel):
    """Where the category path comes from: one column per level, or one delimited column."""

    model_config = ConfigDict(extra="forbid")
    columns: list[str] = Field(default_factory=list)
    column: str | None = None
    separator: str = ">"

    @model_validator(mode="after")
    def _one_way(self) -> CategoryMapping:
        if self.columns and self.column:
            raise ValueError("category: give either `columns` (one per level) or `column`, not both")
        return self

    @property
    def source_columns(self) -> list[str]:
        return list(self.columns) or ([self.column] if self.column else [])


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    currency: str | None = None
    updated_at: str | None = None


class CatalogMapping(BaseModel):
    """How one source file becomes a ``products`` table."""

    model_config = ConfigDict(extra="forbid")
    catalog: str
    source: Path | None = None
    format: Literal["csv", "parquet", "jsonl"] | None = None
    encoding: str = "utf-8"
    delimiter: str | None = None
    images_dir: Path | None = None
    columns: dict[str, str]
    category: CategoryMapping = Field(default_factory=CategoryMapping)
    attributes: dict[str, str] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    image_pattern: str | None = None
    title_template: str | None = None

    @field_validator("catalog")
    @classmethod
    def _catalog_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"catalog name {value!r} must be lower-case letters, digits, '_' or '-' (max 63)"
            )
        return value

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(PRODUCT_COLUMNS))
        if unknown:
            raise ValueError(f"unknown canonical fields {unknown}; use {', '.join(PRODUCT_COLUMNS)}")
        if "product_id" not in value:
            raise ValueError("columns.product_id is required")
        return value

    @model_validator(mode="after")
    def _title_available(self) -> CatalogMapping:
        if "title" not in self.columns and not self.title_template:
            raise ValueError("give columns.title or a title_template to build titles from")
        if self.image_pattern and "image" in self.columns:
            raise ValueError("give either columns.image or image_pattern, not both")
        return self

    def source_columns(self) -> list[str]:
        """Every source column the mapping reads."""
        return list(dict.fromkeys(
            [*self.columns.values(), *self.category.source_columns, *self.attributes.values()]
        ))

    def check_against(self, available: list[str], source: Path) -> None:
        """Raise :class:`MappingError` naming the mapped columns missing from the source."""
        missing = [c for c in self.source_columns() if c not in available]
        if missing:
            raise MappingError(
                f"{source}: mapped columns not found: {', '.join(missing)}. "
                f"Columns in the file: {', '.join(available) or '(none)'}"
            )


def load_mapping(path: Path, **overrides: object) -> CatalogMapping:
    """Read a mapping YAML; relative ``source`` and ``images_dir`` are taken from its folder."""
    path = Path(path)
    if not path.is_file():
        raise MappingError(f"mapping file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise MappingError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise MappingError(f"{path} must hold a mapping at the top level")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        mapping = CatalogMapping.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise MappingError(f"{path}: {problems}") from exc
    base = path.parent
    updates = {}
    for key in ("source", "images_dir"):
        value = getattr(mapping, key)
        if value is not None and not Path(value).is_absolute():
            updates[key] = (base / value).resolve()
    return mapping.model_copy(update=updates)
