"""Assemble a :class:`~skulens.serving.pipeline.SearchPipeline` from the published artefacts.

The index served is the catalogue's current version with its live updates (:class:`LiveIndex`);
the query encoder is the registered embedder version **that built that index** (read from its
manifest), not merely today's champion, so query and product vectors always share a space; the
reranker is the champion reranker when there is one; spelling uses the indexed titles.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow.parquet as pq

from skulens.settings import Settings


def load_pipeline(settings: Settings, catalog: str | None = None, config: Any = None) -> Any:
    from skulens.models.two_tower import TwoTower
    from skulens.pipelines.build_index import index_store
    from skulens.retrieval.encoders import TwoTowerEncoder
    from skulens.retrieval.live import LiveIndex
    from skulens.serving.pipeline import SearchPipeline
    from skulens.serving.spelling import SpellCorrector
    from skulens.tracking.registry import embedder_files, reranker_dir, version_artifacts

    catalog = catalog or settings.retrieval.catalog
    live = LiveIndex.open(index_store(settings, catalog).root)
    products = pq.read_table(live.version / "products.parquet", columns=["product_id", "title"])
    titles = dict(zip(products.column("product_id").to_pylist(), products.column("title").to_pylist(), strict=True))
    titles.update({pid: row["title"] for pid, row in live.delta.rows.items()})
    model_version = str(live.vector.manifest.get("model_version", ""))
    match = re.fullmatch(r"(.+)/(\d+)", model_version)
    embedder = version_artifacts(settings, "embedder", version=int(match.group(2)) if match else None)
    bundle, image_onnx = embedder_files(embedder)
    tower = TwoTower.load(bundle, cache_dir=settings.home / "cache" / "models")
    versions = {"index": live.version.name, "embedder": f"{embedder['name']}/{embedder['version']}"}
    reranker = None
    try:
        from skulens.training.reranker import CrossEncoderReranker

        champion = version_artifacts(settings, "reranker")
        reranker = CrossEncoderReranker(reranker_dir(champion)).score
        versions["reranker"] = f"{champion['name']}/{champion['version']}"
    except LookupError:
        versions["reranker"] = "none"
    kwargs = {"config": config} if config is not None else {}
    return SearchPipeline(lexical=live.lexical, store=live, encoder=TwoTowerEncoder(tower=tower, image_onnx=image_onnx),
                          titles=titles, reranker=reranker, spell=SpellCorrector.from_texts(titles.values()),
                          versions=versions, **kwargs)
