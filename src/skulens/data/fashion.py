"""The bundled fashion catalogue (``fashion/styles.csv`` + ``fashion/images``) as a mapping.

The catalogue is the public "Fashion Product Images" data (Myntra): 42,874 products, 8,011 with a
photo. It has no brand, price or description columns; those stay null rather than invented.
Its real defects are kept and reported: empty colour, season, year or usage (attribute left out,
rule ``missing_value``), empty display name (title derived from gender, colour and article type,
rule ``title_missing``), and products without a photo (rule ``image_missing``).
"""

from __future__ import annotations

from pathlib import Path

from skulens.data.mapping import CatalogMapping, CategoryMapping


def fashion_mapping(root: Path) -> CatalogMapping:
    """The mapping of the fashion catalogue found under ``root`` (styles.csv, images/)."""
    return CatalogMapping(
        catalog="fashion",
        source=Path(root) / "styles.csv",
        format="csv",
        images_dir=Path(root) / "images",
        columns={"product_id": "id", "title": "productDisplayName"},
        category=CategoryMapping(columns=["masterCategory", "subCategory", "articleType"]),
        attributes={
            "gender": "gender",
            "colour": "baseColour",
            "article_type": "articleType",
            "season": "season",
            "year": "year",
            "usage": "usage",
        },
        image_pattern="{product_id}.jpg",
        title_template="{gender} {colour} {article_type}",
    )
