"""Assemble the served components from the published artefacts.

The index served is the catalogue's current version (or a named one) with its live updates
(:class:`LiveIndex`); the query encoder is the registered embedder version **that built that
index** (read from its manifest), not merely today's champion, so query and product vectors always
share a space; the reranker is the champion reranker when there is one; spelling uses the indexed
titles; the LLM cascade is the one ``serving.llm`` describes, checked against the catalogue's
vocabulary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from skulens.settings import Settings


@dataclass
class Served:
    """One loaded variant: its pipeline, index and the catalogue facts the endpoints need."""

    pipeline: Any
    live: Any
    titles: dict[str, str]
    categories: dict[str, list[str]]
    images: dict[str, str]
    vocabulary: Any
    recommender: Any = None  # made on first use (reads the click log)


def load_served(settings: Settings, catalog: str | None = None, config: Any = None, *,
                index_version: str | None = None, reranker_version: int | None = None,
                cascade: Any = None) -> Served:
    """The pipeline over ``index_version`` (default: the published one) of ``catalog``."""
    from skulens.models.two_tower import TwoTower
    from skulens.pipelines.build_index import index_store
    from skulens.retrieval.encoders import TwoTowerEncoder
    from skulens.retrieval.live import LiveIndex
    from skulens.serving.llm.understanding import Vocabulary
    from skulens.serving.pipeline import SearchPipeline
    from skulens.serving.rules import BusinessRules
    from skulens.serving.spelling import SpellCorrector
    from skulens.tracking.registry import (
        embedder_files,
        embedder_onnx,
        reranker_dir,
        reranker_onnx,
        version_artifacts,
    )

    catalog = catalog or settings.retrieval.catalog
    live = LiveIndex.open(index_store(settings, catalog).root, version=index_version)
    products = pq.read_table(live.version / "products.parquet",
                             columns=["product_id", "title", "category_path", "attributes", "image_uri"]).to_pylist()
    products += list(live.delta.rows.values())
    gone = live.tombstones - set(live.delta.rows)  # deleted since the build: unknown to every endpoint
    products = [row for row in products if row["product_id"] not in gone]
    titles = {row["product_id"]: row["title"] for row in products}
    categories = {row["product_id"]: list(row.get("category_path") or []) for row in products}
    images = {row["product_id"]: row["image_uri"] for row in products if row.get("image_uri")}
    model_version = str(live.vector.manifest.get("model_version", ""))
    match = re.fullmatch(r"(.+)/(\d+)", model_version)
    embedder = version_artifacts(settings, "embedder", version=int(match.group(2)) if match else None)
    bundle, image_onnx = embedder_files(embedder)
    tower = TwoTower.load(bundle, cache_dir=settings.home / "cache" / "models")
    text_onnx = embedder_onnx(embedder, "text")
    versions = {"index": live.version.name, "embedder": f"{embedder['name']}/{embedder['version']}",
                "query_encoder": f"onnx {text_onnx.stem}" if text_onnx else "torch"}
    reranker = None
    try:
        from skulens.training.reranker import CrossEncoderReranker, OnnxReranker

        champion = version_artifacts(settings, "reranker", version=reranker_version)
        onnx = reranker_onnx(champion)
        if onnx is not None:  # the exported file that passed parity (INT8 when it did)
            reranker = OnnxReranker(onnx, reranker_dir(champion)).score
            versions["reranker"] = f"{champion['name']}/{champion['version']} ({onnx.stem})"
        else:
            reranker = CrossEncoderReranker(reranker_dir(champion)).score
            versions["reranker"] = f"{champion['name']}/{champion['version']}"
    except LookupError:
        versions["reranker"] = "none"
    kwargs = {"config": config} if config is not None else {}
    encoder = TwoTowerEncoder(tower=tower, image_onnx=image_onnx, text_onnx=text_onnx)
    pipeline = SearchPipeline(
        lexical=live.lexical, store=live, encoder=encoder,
        titles=titles, reranker=reranker, spell=SpellCorrector.from_texts(titles.values()), cascade=cascade,
        rules=BusinessRules.from_settings(settings.serving.rules),
        categories={pid: path[-1] for pid, path in categories.items() if path}, versions=versions, **kwargs)
    vocabulary = Vocabulary.from_products(categories.values(), (dict(row.get("attributes") or []) for row in products))
    return Served(pipeline, live, titles, categories, images, vocabulary)


def load_pipeline(settings: Settings, catalog: str | None = None, config: Any = None) -> Any:
    """Just the search pipeline (see :func:`load_served`)."""
    return load_served(settings, catalog, config).pipeline
