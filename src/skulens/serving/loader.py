"""Assemble the served components from the published artefacts.

The index served is the catalogue's current version (or a named one) with its live updates
(:class:`LiveIndex`); the query encoder is the registered embedder version **that built that
index** (read from its manifest), not merely today's champion, so query and product vectors always
share a space; the reranker is the champion reranker when there is one; spelling uses the indexed
titles; the LLM cascade is the one ``serving.llm`` describes, checked against the catalogue's
vocabulary.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
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
    photo_root: Path | None = None  # photos are served from under this folder only

    def photo(self, product_id: str) -> Path | None:
        """The product's photo file, when it lies inside the catalogue's photo folder."""
        return confined_photo(self.images.get(product_id), self.photo_root)


PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def confined_photo(uri: str | None, root: Path | None) -> Path | None:
    """``uri`` as a file path when it is a photo inside ``root`` (links resolved first); else None.

    A catalogue row (or a live upsert) naming ``/etc/passwd`` or ``../../secret`` is refused here
    even if the importer was bypassed."""
    if not uri or root is None:
        return None
    path = Path(uri).resolve()
    if not path.is_relative_to(root.resolve()) or path.suffix.lower() not in PHOTO_SUFFIXES:
        return None
    return path if path.is_file() else None


def load_served(settings: Settings, catalog: str | None = None, config: Any = None, *,
                index_version: str | None = None, reranker_version: int | None = None,
                cascade: Any = None, on_batch: Any = None, ranker_version: int | None = None) -> Served:
    """The pipeline over ``index_version`` (default: the published one) of ``catalog``.

    With ``serving.batching.enabled`` the query encoder and the reranker batch the calls of
    concurrent searches (:mod:`skulens.serving.batching`); ``on_batch(model, size)`` sees each batch."""
    from skulens.data.products import photo_root
    from skulens.models.onnx import configure
    from skulens.retrieval.live import LiveIndex
    from skulens.retrieval.ranking import RankingPolicy
    from skulens.serving.llm.understanding import Vocabulary
    from skulens.serving.pipeline import SearchPipeline
    from skulens.serving.rules import BusinessRules
    from skulens.serving.spelling import make_speller
    from skulens.storage.layout import index_store

    configure(settings.models.onnx_device, threads=onnx_threads(settings.serving))
    catalog = catalog or settings.retrieval.catalog
    live = LiveIndex.open(index_store(settings, catalog), version=index_version)
    snapshot = pq.read_table(live.version / "products.parquet",
                             columns=["product_id", "title", "category_path", "attributes", "image_uri"])
    products = snapshot.to_pylist()
    products += list(live.delta.rows.values())
    gone = live.tombstones - set(live.delta.rows)  # deleted since the build: unknown to every endpoint
    products = [row for row in products if row["product_id"] not in gone]
    titles = {row["product_id"]: row["title"] for row in products}
    categories = {row["product_id"]: list(row.get("category_path") or []) for row in products}
    root = photo_root(snapshot)
    images = {row["product_id"]: row["image_uri"] for row in products
              if confined_photo(row.get("image_uri"), root) is not None}
    encoder, versions = query_encoder(settings, str(live.vector.manifest.get("model_version", "")))
    versions["index"] = live.version.name
    reranker, versions["reranker"] = champion_reranker(settings, reranker_version)
    ranking = RankingPolicy.load(live.version)
    versions["ranking"] = ranking.describe()
    if reranker is not None and ranking.learned and ranking.rerank_blend == 0.0:
        # Learning found that the reranker does not improve this index's order: it is not run.
        reranker = None
        versions["reranker"] += " (not run: its learned blend on this index version is 0)"
    batching = settings.serving.batching
    if batching.enabled:
        from skulens.serving.batching import BatchedEncoder, BatchedReranker

        encoder = BatchedEncoder(encoder, max_batch=batching.max_batch, max_wait_ms=batching.max_wait_ms,
                                 on_batch=on_batch)
        if reranker is not None:
            reranker = BatchedReranker(reranker, max_batch=batching.max_batch, max_wait_ms=batching.max_wait_ms,
                                       on_batch=on_batch)
    ranker, versions["ranker"] = champion_ranker(settings, ranker_version or settings.serving.ranker_version) \
        if settings.serving.ranker else (None, "off (serving.ranker is false)")
    kwargs = {"config": config} if config is not None else {}
    pipeline = SearchPipeline(
        lexical=live.lexical, store=live, encoder=encoder, ranking=ranking,
        titles=titles, reranker=reranker, spell=make_speller(settings.serving.spelling, titles.values()),
        cascade=cascade,
        rules=BusinessRules.from_settings(settings.serving.rules),
        categories={pid: path[-1] for pid, path in categories.items() if path}, versions=versions,
        ranker=ranker, paths=categories, **kwargs)
    vocabulary = Vocabulary.from_products(categories.values(), (dict(row.get("attributes") or []) for row in products))
    return Served(pipeline, live, titles, categories, images, vocabulary, photo_root=root)


def onnx_threads(serving: Any) -> int:
    """Intra-op threads per ONNX Runtime session: ``serving.onnx_threads``, or (0) the cores shared
    out between the worker processes. Measured on 2 cores (docs/benchmarks/onnx_threads.md): two
    threads in one process cut a lone query's latency, but under concurrent load a second thread
    per session only spins and contends, so two workers of one thread each serve the most."""
    if serving.onnx_threads:
        return int(serving.onnx_threads)
    return max(1, (os.cpu_count() or 1) // max(1, serving.workers))


def query_encoder(settings: Settings, model_version: str) -> tuple[Any, dict[str, str]]:
    """The query encoder of the embedder version ``model_version`` names (``name/N``; the champion
    when it names none): its text tower from the ONNX file that passed parity, else PyTorch. A
    text-encoder version (an index of a catalogue without photos) is that sentence encoder."""
    from skulens.models.two_tower import TwoTower
    from skulens.retrieval.encoders import OnnxTextEncoder, TwoTowerEncoder
    from skulens.tracking.registry import embedder_files, embedder_onnx, served_text_encoder, version_artifacts

    match = re.fullmatch(r"(.+)/(\d+)", model_version)
    if match and match.group(1) == settings.models.text_encoder:
        encoder, _ = served_text_encoder(version_artifacts(settings, "text_encoder", version=int(match.group(2))))
        return encoder, {"embedder": model_version,
                         "query_encoder": f"onnx {encoder.label}" if isinstance(encoder, OnnxTextEncoder) else "torch"}
    embedder = version_artifacts(settings, "embedder", version=int(match.group(2)) if match else None)
    bundle, image_onnx = embedder_files(embedder)
    tower = TwoTower.load(bundle, cache_dir=settings.home / "cache" / "models")
    text_onnx = embedder_onnx(embedder, "text")
    versions = {"embedder": f"{embedder['name']}/{embedder['version']}",
                "query_encoder": f"onnx {text_onnx.stem}" if text_onnx else "torch"}
    return TwoTowerEncoder(tower=tower, image_onnx=image_onnx, text_onnx=text_onnx), versions


def champion_reranker(settings: Settings, version: int | None = None) -> tuple[Any, str]:
    """The champion reranker (or ``version``) as a scorer f(query, titles), from its exported file
    that passed parity (INT8 when it did), with its label; (None, why) when no version passed its
    promotion gate (it must beat BM25 and the bi-encoder on held-out judgments)."""
    from skulens.models.reranker import CrossEncoderReranker, OnnxReranker
    from skulens.tracking.registry import reranker_dir, reranker_onnx, version_artifacts

    try:
        champion = version_artifacts(settings, "reranker", version=version)
    except LookupError:
        return None, "none: no reranker version passed its gate against the baselines"
    note = "" if version is None else f" (pinned; {_champion_or_not(settings, version)})"
    onnx = reranker_onnx(champion)
    if onnx is not None:
        label = f"{champion['name']}/{champion['version']} ({onnx.stem}){note}"
        return OnnxReranker(onnx, reranker_dir(champion)).score, label
    return CrossEncoderReranker(reranker_dir(champion)).score, f"{champion['name']}/{champion['version']}{note}"


def champion_ranker(settings: Settings, version: int | None = None) -> tuple[Any, str]:
    """The learned ranker's champion (or ``version``) with its label; (None, why) when no version
    passed its gate (it must beat the logged policy and the previous champion on held-out clicks,
    and lose nothing that matters on held-out judged queries)."""
    from skulens.models.ranker import LearnedRanker
    from skulens.tracking.registry import version_artifacts

    try:
        found = version_artifacts(settings, "ranker", version=version)
    except LookupError:
        return None, "none: no ranker version passed its gate"
    ranker = LearnedRanker.load(found["model_dir"] / "artifacts" / "model")
    eta = ranker.meta.get("propensities", {}).get("eta")
    return ranker, f"{found['name']}/{found['version']} (LambdaMART, depth {ranker.depth}, eta {eta})"


def _champion_or_not(settings: Settings, version: int) -> str:
    from skulens.tracking.registry import CHAMPION, client

    try:
        champion = client(settings).get_model_version_by_alias(settings.models.reranker, CHAMPION).version
    except Exception:  # noqa: BLE001 - no champion alias at all
        return "not the champion: no version passed its gate"
    return "the champion" if int(champion) == version else f"not the champion, which is version {champion}"


def load_pipeline(settings: Settings, catalog: str | None = None, config: Any = None) -> Any:
    """Just the search pipeline (see :func:`load_served`)."""
    return load_served(settings, catalog, config).pipeline
