"""Airflow DAG ``deploy_canary``: release a new champion (index version, reranker or ranker) to a
growing share of shoppers in every serving worker and roll it back by itself when a gate fails.

Triggered by a new search index or a new champion reranker or ranker (their assets), or by hand
with the challenger's versions as params. Wiring only: the task imports skulens inside its body
(``skulens.pipelines.canary``).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Asset, Param, dag, get_current_context, task

SEARCH_INDEX = Asset(name="skulens_search_index", uri="file:///skulens/indexes")
CHAMPION_RERANKER = Asset(name="skulens_champion_reranker", uri="file:///skulens/models/skulens-reranker")
RANKER = Asset(name="skulens_champion_ranker", uri="file:///skulens/models/skulens-ranker")


def _settings():  # noqa: ANN202 - imported lazily to keep DAG parsing light
    from skulens.settings import load_settings

    return load_settings()


@dag(
    dag_id="deploy_canary",
    doc_md=__doc__,
    schedule=(SEARCH_INDEX | CHAMPION_RERANKER | RANKER),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["skulens", "serving", "release"],
    default_args={"retries": 1, "owner": "skulens"},
    params={"index_version": Param(None, type=["null", "string"], description="challenger index version "
                                   "(default: the published one, when a build triggered this run)"),
            "reranker_version": Param(None, type=["null", "integer"], description="challenger reranker version "
                                      "(default: the champion, when its promotion triggered this run)"),
            "ranker_version": Param(None, type=["null", "integer"], description="challenger ranker version"),
            "hold_s": Param(None, type=["null", "number"], description="seconds at each step "
                            "(default serving.canary.hold_s)")},
)
def deploy_canary():
    # A rolled-back canary is a decision, not a transient failure: no retries.
    @task(retries=0)
    def rollout() -> dict:
        from skulens.pipelines.canary import challenger_from
        from skulens.pipelines.canary import deploy_canary as run

        context = get_current_context()
        settings = _settings()
        params = dict(context["params"])
        if params.get("hold_s"):
            settings = settings.model_copy(update={"serving": settings.serving.model_copy(
                update={"canary": settings.serving.canary.model_copy(update={"hold_s": params["hold_s"]})})})
        record = run(settings, challenger_from(settings, params))
        if record["outcome"] != "promoted":
            raise RuntimeError(f"rolled back: {record['reason']}")
        return {k: record[k] for k in ("id", "outcome", "canary_share_served", "total_requests")}

    rollout()


deploy_canary()
