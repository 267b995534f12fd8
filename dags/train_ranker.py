"""Airflow DAGs ``train_ranker`` (daily, from scratch) and ``train_ranker_hourly`` (incremental:
the champion's trees continued on the latest day): learn the ranker from the logged searches and
clicks, evaluate it on held-out days (IPS) and held-out real judged queries, register it as
``challenger`` and promote it to ``champion`` only through its gate. The service serves the
ranker's champion by alias.

Wiring only: the task imports skulens inside its body (``skulens.pipelines.train_ranker``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task

RANKER = Asset(name="skulens_champion_ranker", uri="file:///skulens/models/skulens-ranker")

DOC = """
### {dag_id}

{what}

1. **train**: impressions and clicks of the events table (the stream job's; `refresh_features`
   keeps it current) → position propensities from the randomised swaps
   (`serving.exploration_share`) → inverse-propensity-weighted LambdaMART (LightGBM) →
   held-out metrics: IPS clicks per search against the logged order and the current champion on
   the latest day, nDCG@10 on held-out real judged queries with and without the ranker →
   `challenger` → the gate (`models.gate.ranker`) → `champion` or a refusal with its reasons.
   The report is `SKULENS_HOME/reports/train_ranker/latest.json`.
"""


def _settings():  # noqa: ANN202 - imported lazily to keep DAG parsing light
    from skulens.settings import load_settings

    return load_settings()


def _ranker_dag(dag_id: str, schedule: str, incremental: bool, what: str):  # noqa: ANN202
    @dag(
        dag_id=dag_id,
        doc_md=DOC.format(dag_id=dag_id, what=what),
        schedule=schedule,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["skulens", "ranking", "training"],
        default_args={"retries": 1, "retry_delay": timedelta(minutes=5), "owner": "skulens"},
        params={"catalog": Param(None, type=["null", "string"], description="catalogue (default in config)"),
                "incremental": Param(incremental, type="boolean",
                                     description="continue the champion's trees on the latest day")},
    )
    def build():
        # A refused gate is not transient: no retries.
        @task(retries=0, outlets=[RANKER])
        def train() -> dict:
            from skulens.pipelines.train_ranker import train_ranker

            context = get_current_context()
            run_id = context["run_id"].replace(":", "_").replace("+", "_")
            params = context["params"]
            summary = train_ranker(_settings(), run_id, params.get("catalog"), incremental=bool(params["incremental"]))
            if not summary["gate"]["promoted"]:
                # Skipped, not failed: no asset event for a champion that did not change.
                from airflow.exceptions import AirflowSkipException

                raise AirflowSkipException("not promoted: " + "; ".join(summary["gate"]["reasons"]))
            return {"version": summary["registered"], "promoted": summary["gate"]["promoted"],
                    "reasons": summary["gate"]["reasons"], "metrics": summary["metrics"]}

        train()

    return build()


train_ranker = _ranker_dag("train_ranker", "@daily", False, "Daily: a ranker trained from scratch on every logged day.")
train_ranker_hourly = _ranker_dag("train_ranker_hourly", "@hourly", True,
                                  "Hourly: the champion's trees continued on the latest day (from scratch when "
                                  "there is no champion yet).")
