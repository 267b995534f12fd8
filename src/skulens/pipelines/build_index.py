"""The stages of the ``build_index`` pipeline (the DAG of the same name wires them).

embed (champion embedder) -> build_vector (sharded FAISS + recall gate) -> build_lexical (BM25)
-> publish (atomic ``CURRENT`` swap) -> notify_serving -> report.

Everything is staged under ``SKULENS_HOME/indexes/<catalog>/versions/<run_id>/`` (``embeddings.parquet``,
``vector/``, ``lexical/``, ``manifest.json``) and becomes current only in ``publish``; a failed
recall gate stops the run before it and the previous index version keeps serving. Rollback:
:func:`rollback` points ``CURRENT`` back at an earlier version.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from skulens.pipelines.runlog import finish, raise_if_failed, run_stages, stage, stage_result
from skulens.settings import Settings
from skulens.storage.layout import index_store, reload_marker

PIPELINE = "build_index"
STAGES = ["embed", "build_vector", "build_lexical", "learn_ranking", "publish", "notify_serving"]




def _staging(settings: Settings, catalog: str, run_id: str) -> Path:
    store = index_store(settings, catalog)
    path = store.staging_path(run_id)
    return path if path.is_dir() else store.begin(run_id)


def _previous(settings: Settings, run_id: str, name: str) -> dict[str, Any]:
    return stage_result(settings, PIPELINE, run_id, name)


def embed(settings: Settings, run_id: str, catalog: str | None = None) -> dict[str, Any]:
    """Snapshot the catalogue into the version first (every later stage builds from that snapshot,
    so a catalogue published mid-run cannot mix versions), then embed the snapshot with the champion
    embedder (served ONNX image tower when exported), by the runner ``retrieval.embed_runner`` names;
    a catalogue without photos with the text-encoder champion instead, when one passed its gate
    (``retrieval.text_encoder``). The local runner copies the published version's vectors of
    products that did not change (same model version, title and photo) and embeds the rest."""
    import pyarrow.parquet as pq

    from skulens.data.catalog import read_table
    from skulens.models.onnx import configure
    from skulens.tracking.registry import embedder_files

    configure(settings.models.onnx_device)
    catalog = catalog or settings.retrieval.catalog
    with stage(settings, PIPELINE, run_id, "embed") as out:
        folder = _staging(settings, catalog, run_id)
        products = read_table(settings, catalog, "products")
        pq.write_table(products, folder / "products.parquet")
        champion, text_only = champion_for(settings, products)
        model_version = f"{champion['name']}/{champion['version']}"
        # Local whatever the runner for a text-only encoder: one small text model, no photos to decode.
        runner = "local" if text_only else settings.retrieval.embed_runner
        if runner == "spark":
            bundle, image_onnx = embedder_files(champion)
            from skulens.spark.embed_catalog import embed_with_spark
            from skulens.spark.session import spark_session

            summary = embed_with_spark(spark_session(settings, app_name=f"skulens-embed-{catalog}"),
                                       folder / "products.parquet", bundle, folder / "embeddings.parquet",
                                       model_version=model_version, image_onnx=image_onnx,
                                       shard_level=settings.retrieval.shard_level)
        else:
            from skulens.retrieval.embed import embed_catalog

            summary = embed_catalog(products, local_mapper(settings, champion, text_only=text_only),
                                    folder / "embeddings.parquet", model_version=model_version,
                                    shard_level=settings.retrieval.shard_level,
                                    previous=_published_embeddings(settings, catalog))
        out.update(summary, catalog=catalog, run_id=champion["run_id"], runner=runner,
                   snapshot=str(folder / "products.parquet"))
        return out


def champion_for(settings: Settings, products: Any) -> tuple[dict[str, Any], bool]:
    """The registered model that embeds ``products`` and whether it is the text-only encoder."""
    from skulens.tracking.registry import version_artifacts

    text_champion = _text_encoder_for(settings, products)
    return (text_champion, True) if text_champion is not None else (version_artifacts(settings, "embedder"), False)


def local_mapper(settings: Settings, champion: dict[str, Any], *, text_only: bool) -> Any:
    """The local runner's mapper for a champion: the text encoder's served file (ONNX, INT8 when it
    passed parity) embedding titles as it embeds queries, or the two-tower with its served ONNX
    image tower."""
    if text_only:
        from skulens.retrieval.embed import TextMapper
        from skulens.tracking.registry import served_text_encoder

        encoder, _ = served_text_encoder(champion)
        return TextMapper(encoder)
    from skulens.models.two_tower import TwoTower
    from skulens.retrieval.embed import EmbeddingMapper
    from skulens.tracking.registry import embedder_files

    bundle, image_onnx = embedder_files(champion)
    return EmbeddingMapper(TwoTower.load(bundle, cache_dir=settings.home / "cache" / "models"), image_onnx)


def _published_embeddings(settings: Settings, catalog: str) -> Path | None:
    """The published version's embeddings, whose unchanged products the local runner copies
    (``retrieval.reuse_embeddings``); None when switched off or nothing is published."""
    if not settings.retrieval.reuse_embeddings:
        return None
    current = index_store(settings, catalog).current()
    return None if current is None else current / "embeddings.parquet"


def _text_encoder_for(settings: Settings, products: Any) -> dict[str, Any] | None:
    """The text-encoder champion's artefacts when this catalogue has no photos (and one serves);
    else None (two-tower)."""
    from skulens.tracking.registry import text_encoder_champion

    if products.column("image_uri").null_count < products.num_rows:
        return None
    return text_encoder_champion(settings)


def _snapshot(settings: Settings, run_id: str) -> Any:
    """The products table this build indexes (written by ``embed``)."""
    import pyarrow.parquet as pq

    embedded = _previous(settings, run_id, "embed")
    return pq.read_table(_staging(settings, embedded["catalog"], run_id) / "products.parquet")


def milvus_collection(catalog: str, run_id: str) -> str:
    """A valid Milvus collection name for one build."""
    return "skulens_" + re.sub(r"[^0-9A-Za-z_]", "_", f"{catalog}__{run_id}")[:200]


def build_vector(settings: Settings, run_id: str) -> dict[str, Any]:
    """The vector store over the fused vectors (FAISS shards or a Milvus collection, per
    ``retrieval.store``); raises RecallGateError below the configured recall."""
    from dataclasses import asdict

    from skulens.retrieval.embed import read_embeddings
    from skulens.retrieval.filters import FilterColumns
    from skulens.retrieval.stores import build_vector_store
    from skulens.retrieval.vector_index import VectorIndexConfig

    with stage(settings, PIPELINE, run_id, "build_vector") as out:
        embedded = _previous(settings, run_id, "embed")
        folder = _staging(settings, embedded["catalog"], run_id)
        ids, vectors, keys = read_embeddings(folder / "embeddings.parquet")
        config = VectorIndexConfig(**settings.retrieval.vector.model_dump())
        columns = FilterColumns.from_products(_snapshot(settings, run_id), order=ids)
        kind = settings.retrieval.store
        options = {}
        if kind == "milvus":
            uri = settings.retrieval.milvus.uri
            if "://" not in uri:
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
            options = {"uri": uri, "token": settings.retrieval.milvus.token,
                       "collection": milvus_collection(embedded["catalog"], run_id)}
        index = build_vector_store(kind, ids, vectors, keys, columns, config, embedded["model_version"], **options)
        if kind == "milvus":
            (folder / "vector").mkdir(parents=True, exist_ok=True)
            (folder / "vector" / "manifest.json").write_text(json.dumps({**index.manifest, "uri": options["uri"]},
                                                                        indent=2), encoding="utf-8")
            out.update(store="milvus", collection=options["collection"], vectors=len(ids), dim=int(vectors.shape[1]),
                       build_s=index.manifest["build_s"])
        else:
            index.save(folder / "vector")
            out.update({k: index.manifest[k] for k in ("vectors", "dim", "shards", "merged_categories", "build_s")},
                       store="faiss")
        out.update({"recall@10": index.manifest["recall@10"], "config": asdict(config)})
        return out


# Share of the rerank stage's timeout that learn_ranking's depth may use (its p95 timed in the
# build process): serving adds a thread hand-off, micro-batching and the HTTP work of other
# requests on the same cores around the model call.
RERANK_BUDGET_SHARE = 0.75
# Training queries learn_ranking reads: the rescorer (LambdaMART) needs thousands; the cross-encoder
# part of learning uses the first few hundred of them.
RANKING_QUERIES = 4000


def learn_ranking(settings: Settings, run_id: str) -> dict[str, Any]:
    """Learn this version's ranking policy (fusion weight, rescorer, rerank depth and blend) on
    training queries with the components that will serve it, and store it with the version
    (``ranking.json``, ``rescorer.txt`` when one was kept).
    A catalogue with neither judgments nor attribute queries gets the defaults, saying so."""
    import numpy as np

    from skulens.evaluation.ranking import UNJUDGED_REL, ranking_queries
    from skulens.evaluation.ranking import learn_ranking as learn
    from skulens.retrieval.encoders import query_vectors
    from skulens.retrieval.lexical import BM25Index
    from skulens.retrieval.ranking import RankingPolicy
    from skulens.retrieval.stores import open_vector_store
    from skulens.serving.loader import champion_reranker, query_encoder

    with stage(settings, PIPELINE, run_id, "learn_ranking") as out:
        embedded = _previous(settings, run_id, "embed")
        catalog, folder = embedded["catalog"], _staging(settings, embedded["catalog"], run_id)
        products = _snapshot(settings, run_id)
        found = ranking_queries(settings, catalog, products, limit=RANKING_QUERIES)
        if found is None:
            policy = RankingPolicy(learned_on=f"default: {catalog} has no judgments and no attribute queries "
                                              "to learn from")
        else:
            texts, qrels, source = found
            encoder, _ = query_encoder(settings, embedded["model_version"])
            store = open_vector_store(folder / "vector", settings.retrieval.milvus.token)
            lexical = BM25Index.load(folder / "lexical")
            reranker, label = champion_reranker(settings)
            titles = dict(zip(products.column("product_id").to_pylist(), products.column("title").to_pylist(),
                              strict=True))
            # The rerank stage's timeout, with headroom for what serving adds around the model call.
            budget = RERANK_BUDGET_SHARE * settings.serving.stage_timeout_ms.get("rerank", 60.0)
            policy = learn(texts, qrels, titles=titles, reranker=reranker, max_depth=settings.serving.rerank_top_k,
                           rerank_budget_ms=budget,
                           # Attribute queries grade every product; human judgments only a few per query.
                           unjudged_rel=0 if "attribute-derived" in source else UNJUDGED_REL,
                           encode=lambda batch: np.vstack([query_vectors(encoder, t, None) for t in batch]),
                           dense=lambda vectors, k: store.search(vectors, k=k),
                           lexical=lambda text, k: lexical.search(text, k=k),
                           source=f"{source}; index {run_id}; reranker {label}")
        policy.save(folder)
        out.update({k: v for k, v in policy.to_dict().items() if k != "measured"},
                   measured={k: v for k, v in policy.measured.items() if not k.endswith("grid_nDCG@10")})
        return out


def _point_milvus_alias(settings: Settings, catalog: str, version_dir: Path) -> str | None:
    """For a Milvus-backed version, move the ``<catalog>_current`` alias to its collection."""
    manifest = version_dir / "vector" / "manifest.json"
    info = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    if info.get("kind") != "milvus":
        return None
    from skulens.retrieval.milvus_store import MilvusVectorStore

    client = MilvusVectorStore.connect(info["uri"], settings.retrieval.milvus.token)
    MilvusVectorStore(client, info["collection"]).publish_as(f"skulens_{catalog}_current")
    return info["collection"]


def build_lexical(settings: Settings, run_id: str) -> dict[str, Any]:
    from skulens.retrieval.lexical import BM25Index, LexicalConfig

    with stage(settings, PIPELINE, run_id, "build_lexical") as out:
        catalog = _previous(settings, run_id, "embed")["catalog"]
        # The products this version indexes (the embed stage's snapshot; compaction folds live
        # updates into it).
        products = _snapshot(settings, run_id)
        folder = _staging(settings, catalog, run_id)
        index = BM25Index.build(products, LexicalConfig.from_settings(settings.retrieval),
                                folder=folder / "lexical")
        out.update(documents=index.documents, engine=index.manifest["engine"], build_s=index.manifest["build_s"],
                   boosts=dict(index.config.boosts))
        return out


def publish(settings: Settings, run_id: str) -> dict[str, Any]:
    """Write the version manifest and swap ``CURRENT`` to this version (atomic)."""
    with stage(settings, PIPELINE, run_id, "publish") as out:
        embedded = _previous(settings, run_id, "embed")
        vector = _previous(settings, run_id, "build_vector")
        lexical = _previous(settings, run_id, "build_lexical")
        ranking = _previous(settings, run_id, "learn_ranking")
        store = index_store(settings, embedded["catalog"])
        previous = store.current_id()
        manifest = {"version": run_id, "catalog": embedded["catalog"], "model_version": embedded["model_version"],
                    "embed": embedded, "vector": vector, "lexical": lexical, "ranking": ranking,
                    "published_at": datetime.now(UTC).isoformat(timespec="seconds"), "previous": previous,
                    # A rebuild from the catalogue folds no live update: the whole log replays on it.
                    "updates_through": 0}
        (store.staging_path(run_id) / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        store.commit(run_id, keep=settings.retrieval.keep_versions)
        try:
            alias_target = _point_milvus_alias(settings, embedded["catalog"], store.current())
        except Exception:
            # Serving follows CURRENT and the alias together: if the alias cannot move, the
            # previous version keeps serving and the stage fails.
            if previous is not None:
                store.set_current(previous)
            raise
        out.update(version=run_id, previous=previous, catalog=embedded["catalog"], path=str(store.current()),
                   milvus_alias_target=alias_target)
        return out


def notify_serving(settings: Settings, run_id: str) -> dict[str, Any]:
    """Tell serving to reload: a ``RELOAD`` file beside ``CURRENT`` (a running service watches it
    and reloads by itself) and, when ``retrieval.reload_url`` is set, a POST to the service's
    ``/admin/reload`` with the admin key from ``$<serving.admin_key_env>``."""
    with stage(settings, PIPELINE, run_id, "notify_serving") as out:
        published = _previous(settings, run_id, "publish")
        marker = reload_marker(settings, published["catalog"])
        payload = {"version": published["version"], "at": datetime.now(UTC).isoformat(timespec="seconds")}
        tmp = marker.with_name(f".RELOAD.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(payload), encoding="utf-8")
        os.replace(tmp, marker)
        out.update(marker=str(marker), posted=None)
        if settings.retrieval.reload_url:
            out["posted"] = post_reload(settings, published["version"])
        return out


def post_reload(settings: Settings, version: str | None) -> int | str:
    """POST ``/admin/reload`` for the control variant (at index ``version``; None: the published one,
    as after a new ranker champion); the status, or why it failed."""
    import urllib.error
    import urllib.request

    key = os.environ.get(settings.serving.admin_key_env, "")
    if not key:
        return f"skipped: ${settings.serving.admin_key_env} is not set (the service's admin key)"
    body = json.dumps({"variant": "control"} | ({"index_version": version} if version else {})).encode()
    request = urllib.request.Request(settings.retrieval.reload_url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "X-API-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - configured URL
            return response.status
    except urllib.error.HTTPError as exc:
        return f"failed: HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"
    except OSError as exc:  # serving down: it picks the RELOAD file up when it starts or next polls
        return f"failed: {exc}"


def rollback(settings: Settings, catalog: str, version: str | None = None) -> str:
    """Point ``CURRENT`` at ``version`` (default: the version the current one replaced); return it."""
    store = index_store(settings, catalog)
    versions = store.list_versions()
    current = store.current()
    if version is None:
        manifest = current / "manifest.json" if current else None
        previous = json.loads(manifest.read_text(encoding="utf-8")).get("previous") if manifest and \
            manifest.is_file() else None
        if previous is None:
            raise ValueError(f"the current index of {catalog} records no previous version to roll back to")
        version = previous
    if version not in versions:
        raise ValueError(f"index version {version!r} of {catalog} does not exist; known: {', '.join(versions)}")
    store.set_current(version)
    _point_milvus_alias(settings, catalog, store.versions / version)
    return version


def report(settings: Settings, run_id: str) -> dict[str, Any]:
    """Write ``latest.json`` for the run; raise if a stage failed or did not run."""
    return raise_if_failed(finish(settings, PIPELINE, run_id, STAGES))


def run_all(settings: Settings, run_id: str, catalog: str | None = None) -> dict[str, Any]:
    """Every stage in order in this process (what the DAG does, without Airflow)."""
    steps = [lambda: embed(settings, run_id, catalog)] + [
        lambda step=step: step(settings, run_id)
        for step in (build_vector, build_lexical, learn_ranking, publish, notify_serving)]
    return run_stages(settings, PIPELINE, run_id, steps, STAGES)
