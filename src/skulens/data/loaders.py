"""Entry points that build catalogues: the bundled datasets and a user's own files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from skulens.data.catalog import BuildReport, publish_catalog
from skulens.data.fashion import fashion_mapping
from skulens.data.homedepot import load_homedepot
from skulens.data.mapping import CatalogMapping
from skulens.data.products import build_products
from skulens.data.sources import SourceError, read_records
from skulens.settings import Settings

BUNDLED = ("fashion", "homedepot")


def import_catalog(settings: Settings, mapping: CatalogMapping) -> BuildReport:
    """Validate a catalogue file through ``mapping`` and publish its ``products`` table."""
    if mapping.source is None:
        raise SourceError("the mapping names no source file (set `source:` or pass --source)")
    raw = read_records(mapping.source, mapping.format, encoding=mapping.encoding,
                       delimiter=mapping.delimiter)
    products, check = build_products(raw, mapping)
    return publish_catalog(settings, mapping.catalog, {"products": products}, {"products": check},
                           [mapping.source])


def build_fashion(settings: Settings, root: Path | None = None) -> BuildReport:
    """Build the ``fashion`` catalogue from ``styles.csv`` and its photo folder."""
    root = Path(root or settings.datasets.fashion_root)
    if not (root / "styles.csv").is_file():
        raise SourceError(f"fashion catalogue not found: {root / 'styles.csv'} "
                          "(set datasets.shared_root or SKULENS__DATASETS__SHARED_ROOT)")
    return import_catalog(settings, fashion_mapping(root))


def build_homedepot(settings: Settings, path: Path | None = None,
                    gate: Callable[[Path], Any] | None = None) -> BuildReport:
    """Build the ``homedepot`` catalogue (products + judgments) from a judgments CSV; ``gate`` checks
    the staged tables before they are published (see :func:`publish_catalog`)."""
    path = Path(path or settings.datasets.homedepot_path)
    tables, checks = load_homedepot(path)
    return publish_catalog(settings, "homedepot", tables, checks, [path], gate=gate)


def build_bundled(settings: Settings, only: list[str] | None = None) -> list[BuildReport]:
    """Build the bundled catalogues (all, or those named in ``only``)."""
    builders = {"fashion": build_fashion, "homedepot": build_homedepot}
    names = only or list(BUNDLED)
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise ValueError(f"unknown bundled dataset(s) {unknown}; choose from {', '.join(BUNDLED)}")
    return [builders[name](settings) for name in names]
