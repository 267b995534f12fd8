"""Turn raw catalogue records into the ``products`` table through a :class:`CatalogMapping`.

Rules (rejected records are left out; defects are kept and flagged):

========================  ==========================  ============================================
field                     rule                        action
========================  ==========================  ============================================
(record)                  malformed                   reject: wrong field count, bad JSON
product_id                required, unique,           reject
                          max_length (128)
title                     title_missing               defect: derived from ``title_template``
title                     required, max_length (1000) reject: no title and none can be derived
category_path             required                    reject: mapped category columns all empty
price                     type:float, range (>= 0)    reject
currency                  pattern (ISO 4217),         reject
                          required_with:price
updated_at                type:timestamp              reject (empty takes the default)
attributes.<name>         missing_value               defect: the attribute is left out
image_uri                 image_missing               defect: no photo for the product
image_uri                 image_not_found             defect: the named photo file is absent
image_uri                 image_outside_folder        reject: an absolute path, or one that leads
                                                      out of the photo folder (``../``, a link)
========================  ==========================  ============================================
"""

from __future__ import annotations

import os
import re
import string
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from skulens.data.checks import CheckResult, RecordChecker, blank
from skulens.data.contracts import CONTRACTS
from skulens.data.mapping import CatalogMapping
from skulens.data.sources import RawRecords

_WHOLE_FLOAT = re.compile(r"^-?\d+\.0+$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def build_products(raw: RawRecords, mapping: CatalogMapping) -> tuple[pa.Table, CheckResult]:
    """Validate and convert ``raw`` into a ``products`` table; return it with the check result."""
    mapping.check_against(raw.columns, raw.path)
    frame = pd.DataFrame({"__row__": raw.frame["__row__"]})
    for canonical, column in mapping.columns.items():
        frame[canonical] = raw.frame[column].map(_clean)
    for name in ("title", "description", "brand", "price", "currency", "image", "updated_at"):
        if name not in frame:
            frame[name] = ""
    checker = RecordChecker(frame, "products", str(raw.path), key_field="product_id")
    checker.add_rejects(raw.malformed)

    checker.require("product_id")
    checker.max_length("product_id", 128)
    checker.unique(["product_id"])

    attributes = _attributes(raw, mapping, checker)
    category = _category_paths(raw, mapping, checker)
    frame["title"] = _titles(frame, mapping, checker, attributes, category)
    checker.max_length("title", 1000)

    price = checker.parse_float("price", minimum=0.0)
    currency = frame["currency"].str.upper().where(~blank(frame["currency"]), mapping.defaults.currency)
    frame["currency"] = currency
    bad_code = currency.notna().to_numpy() & ~currency.fillna("").str.match(_CURRENCY).to_numpy()
    checker.reject(bad_code, "currency", "pattern", "currency must be a 3-letter ISO 4217 code")
    checker.reject(price.notna().to_numpy() & currency.isna().to_numpy(), "currency",
                   "required_with:price", "a price needs a currency (column or defaults.currency)")

    default_time = _default_updated_at(raw.path, mapping)
    updated_at = checker.parse_timestamp("updated_at", default=default_time)
    image_uri = _image_uris(frame, mapping, checker)

    result = checker.result()
    alive = checker.alive
    table = pa.table(
        {
            "product_id": frame.loc[alive, "product_id"].tolist(),
            "title": frame.loc[alive, "title"].tolist(),
            "description": _nullable(frame.loc[alive, "description"]),
            "brand": _nullable(frame.loc[alive, "brand"]),
            "category_path": pa.array([category[i] for i in np.flatnonzero(alive)],
                                      type=pa.list_(pa.string())),
            "attributes": pa.array([list(attributes[i].items()) for i in np.flatnonzero(alive)],
                                   type=pa.map_(pa.string(), pa.string())),
            "price": pa.array(price[alive].to_numpy(), from_pandas=True),
            "currency": [c if isinstance(c, str) else None for c in currency[alive]],
            "image_uri": [image_uri[i] for i in np.flatnonzero(alive)],
            "updated_at": pa.array(updated_at[alive].dt.tz_convert("UTC").to_numpy(dtype="datetime64[us]"),
                                   type=pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
        }
    )
    table = CONTRACTS["products"].conform(table)
    # The photo folder travels with the table (and with every index snapshot of it): the service
    # serves photos from under it only.
    table = table.replace_schema_metadata({PHOTO_ROOT_KEY: str(_photo_root(mapping))})
    return table, result


PHOTO_ROOT_KEY = "skulens.photo_root"


def photo_root(table: pa.Table) -> Path | None:
    """The photo folder a ``products`` table was imported with (None for a table without one)."""
    value = (table.schema.metadata or {}).get(PHOTO_ROOT_KEY.encode())
    return Path(value.decode()) if value else None


def _photo_root(mapping: CatalogMapping) -> Path:
    return Path(mapping.images_dir).resolve() if mapping.images_dir else Path.cwd().resolve()


def _clean(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def _nullable(series: pd.Series) -> list[str | None]:
    return [v if isinstance(v, str) and v else None for v in series]


def _attribute_value(value: object) -> str:
    text = str(value).strip() if value is not None else ""
    # CSV exports from pandas write whole numbers as floats ("2011.0"); store them as written.
    return text[: text.index(".")] if _WHOLE_FLOAT.match(text) else text


def _attributes(raw: RawRecords, mapping: CatalogMapping, checker: RecordChecker) -> list[dict[str, str]]:
    out: list[dict[str, str]] = [{} for _ in range(len(raw.frame))]
    for name, column in mapping.attributes.items():
        values = raw.frame[column].map(_attribute_value)
        missing = (values == "").to_numpy()
        texts = values.to_numpy(dtype=object)
        checker.defect(missing, f"attributes.{name}", "missing_value",
                       f"attribute {name} is empty; left out of the product's attributes",
                       values=raw.frame[column])
        for i in np.flatnonzero(~missing):
            out[i][name] = texts[i]
    return out


def _category_paths(raw: RawRecords, mapping: CatalogMapping, checker: RecordChecker) -> list[list[str]]:
    spec = mapping.category
    if not spec.source_columns:
        return [[] for _ in range(len(raw.frame))]  # the catalogue has no taxonomy
    if spec.columns:
        levels = [raw.frame[c].map(lambda v: str(v).strip()) for c in spec.columns]
        paths = [[lvl for lvl in row if lvl] for row in zip(*levels, strict=True)]
    else:
        paths = [
            list(v) if isinstance(v, list)
            else [p.strip() for p in str(v).split(spec.separator) if p.strip()]
            for v in raw.frame[spec.column]
        ]
    empty = np.array([not p for p in paths], dtype=bool)
    checker.reject(empty, "category_path", "required", "the mapped category columns are all empty",
                   values=pd.Series([""] * len(paths)))
    return paths


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


def _titles(frame: pd.DataFrame, mapping: CatalogMapping, checker: RecordChecker,
            attributes: list[dict[str, str]], category: list[list[str]]) -> pd.Series:
    titles = frame["title"].astype("object").copy()
    missing = blank(titles)
    if mapping.title_template and missing.any():
        fields = [f for _, f, _, _ in string.Formatter().parse(mapping.title_template) if f]
        for i in np.flatnonzero(missing & checker.alive):
            values = _Blank(attributes[i])
            values.update({k: frame.at[i, k] for k in ("product_id", "brand") if k in frame})
            values["category"] = category[i][-1] if category[i] else ""
            derived = " ".join(mapping.title_template.format_map(values).split())
            if derived and any(values.get(f) for f in fields):
                titles.iat[i] = derived
        derived_mask = missing & ~blank(titles)
        checker.defect(derived_mask, "title", "title_missing",
                       f"title is empty; derived from '{mapping.title_template}'",
                       values=frame["title"])
    checker.reject(blank(titles), "title", "required", "title is empty and cannot be derived")
    return titles


def _default_updated_at(path: Path, mapping: CatalogMapping) -> pd.Timestamp:
    if mapping.defaults.updated_at:
        return pd.Timestamp(mapping.defaults.updated_at, tz="UTC")
    # Without a time in the source, the file's own modification time is the best honest answer.
    return pd.Timestamp(datetime.fromtimestamp(os.stat(path).st_mtime, UTC))


def _image_uris(frame: pd.DataFrame, mapping: CatalogMapping, checker: RecordChecker) -> list[str | None]:
    images_dir = mapping.images_dir
    n = len(frame)
    if "image" in mapping.columns:
        names = frame["image"].astype("string").fillna("")
    elif mapping.image_pattern:
        names = frame["product_id"].map(
            lambda pid: mapping.image_pattern.format(product_id=pid) if pid else ""
        )
    else:
        checker.defect(np.ones(n, dtype=bool), "image_uri", "image_missing",
                       "the mapping names no image column or pattern")
        return [None] * n

    root = _photo_root(mapping)
    # One directory listing answers the common case (a bare file name) without a stat per row.
    present = set(os.listdir(root)) if root.is_dir() else set()
    uris: list[str | None] = [None] * n
    absent = np.zeros(n, dtype=bool)
    not_found = np.zeros(n, dtype=bool)
    outside = np.zeros(n, dtype=bool)
    named = "image" in mapping.columns
    for i, name in enumerate(names.tolist()):
        if not name:
            absent[i] = True
        elif _URI.match(name):
            uris[i] = name  # remote photo: checked when it is fetched, not here
        elif "/" not in name:
            if name in present and (root / name).is_symlink() and not (root / name).resolve().is_relative_to(root):
                outside[i] = True  # a link out of the photo folder
            elif name in present:
                uris[i] = f"{root}/{name}"
            elif named:
                not_found[i] = True
            else:
                absent[i] = True
        else:
            path = (root / name).resolve()
            if Path(name).is_absolute() or not path.is_relative_to(root):
                outside[i] = True  # a catalogue file must not make the service read other files
            elif path.is_file():
                uris[i] = str(path)
            elif named:
                not_found[i] = True
            else:
                absent[i] = True
    checker.reject(outside, "image_uri", "image_outside_folder",
                   f"the photo path is absolute or leads out of the photo folder {root}", values=names)
    checker.defect(absent, "image_uri", "image_missing", "the product has no photo", values=names)
    checker.defect(not_found, "image_uri", "image_not_found",
                   f"the photo file is not in {images_dir}", values=names)
    return uris
