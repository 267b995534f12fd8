"""Airflow DAG ``build_index``: embed the catalogue with the champion embedder -> sharded FAISS with
the recall gate -> BM25 -> learned ranking policy -> atomic publish -> tell serving to reload.

Wiring only: each task imports skulens inside its body and calls one stage of
``skulens.pipelines.build_index``. Runs when a new embedder becomes champion or the prepared
catalogue changes, or by hand.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task

CHAMPION_EMBEDDER = Asset(name="skulens_champion_embedder", uri="file:///skulens/models/skulens-embedder")
PREPARED_CATALOG = Asset(name="skulens_prepared_catalog", uri="file:///skulens/prepared/fashion")
SEARCH_INDEX = Asset(name="skulens_search_index", uri="file:///skulens/indexes")

DOC = """
### build_index

1. **embed**: title, image and fused product vectors from the `champion` of `skulens-embedder`
   (its served ONNX image tower when the export stage left one);
2. **build_vector**: FAISS HNSW per category shard, centroid router, **recall gate** against exact
   search (recall@10 >= `retrieval.vector.min_recall`); a failed gate stops the run here;
3. **build_lexical**: BM25 over titles, attributes and categories;
4. **learn_ranking**: the fusion weight and the rerank depth and blend, learned on training queries
   (judgments, else attribute queries) with this version's own index, encoder and champion
   reranker; stored with the version (`ranking.json`) and served with it;
5. **publish**: manifest + atomic `CURRENT` swap (the previous version stays for rollback);
6. **notify_serving**: `RELOAD` marker (a running service follows `CURRENT` by itself) and a POST
   to `retrieval.reload_url` with the admin key when set;
7. **report**: `SKULENS_HOME/reports/build_index/latest.json`, also when a stage failed.
"""


def _run_id() -> str:
    return get_current_context()["run_id"].replace(":", "_").replace("+", "_")


def _settings():  # noqa: ANN202 - imported lazily to keep DAG parsing light
    from skulens.settings import load_settings

    return load_settings()


@dag(
    dag_id="build_index",
    doc_md=DOC,
    schedule=(CHAMPION_EMBEDDER | PREPARED_CATALOG),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["skulens", "retrieval", "index"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2), "owner": "skulens"},
    params={"catalog": Param(None, type=["null", "string"], description="catalogue to index (default in config)")},
)
def build_index():
    @task
    def embed() -> dict:
        from skulens.pipelines import build_index as p

        result = p.embed(_settings(), _run_id(), get_current_context()["params"].get("catalog"))
        return {"products": result["products"], "model_version": result["model_version"]}

    # The gate is not transient: no retries.
    @task(retries=0)
    def build_vector(_: dict) -> dict:
        from skulens.pipelines import build_index as p

        return {"recall@10": p.build_vector(_settings(), _run_id())["recall@10"]}

    @task
    def build_lexical(_: dict) -> dict:
        from skulens.pipelines import build_index as p

        return {"documents": p.build_lexical(_settings(), _run_id())["documents"]}

    @task
    def learn_ranking(_: dict) -> dict:
        from skulens.pipelines import build_index as p

        result = p.learn_ranking(_settings(), _run_id())
        return {"fusion_weight": result["fusion_weight"], "rerank_depth": result["rerank_depth"],
                "rerank_blend": result["rerank_blend"]}

    @task(retries=0, outlets=[SEARCH_INDEX])
    def publish(_: dict) -> dict:
        from skulens.pipelines import build_index as p

        return {"version": p.publish(_settings(), _run_id())["version"]}

    @task
    def notify_serving(_: dict) -> dict:
        from skulens.pipelines import build_index as p

        return {"marker": p.notify_serving(_settings(), _run_id())["marker"]}

    @task(retries=0, trigger_rule="all_done")
    def report() -> dict:
        from skulens.pipelines import build_index as p

        return {"status": p.report(_settings(), _run_id())["status"]}

    notify_serving(publish(learn_ranking(build_lexical(build_vector(embed()))))) >> report()


build_index()
