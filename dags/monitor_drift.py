"""Airflow DAG ``monitor_drift``: hourly, and after each index build, compare the current window of
searches, outcomes per variant, served query embeddings and the catalogue with the reference
window (Evidently reports under ``SKULENS_HOME/reports/drift/<run>/``). A drift decision emits the
``skulens_drift`` asset event (its extra names the reason), which schedules ``train_and_export``;
a stable window ends the task as skipped, so nothing is triggered.

Wiring only: the task imports skulens inside its body (``skulens.pipelines.monitor_drift``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

SEARCH_INDEX = Asset(name="skulens_search_index", uri="file:///skulens/indexes")
DRIFT = Asset(name="skulens_drift", uri="file:///skulens/reports/drift")


@dag(
    dag_id="monitor_drift",
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("@hourly", timezone="UTC"), assets=SEARCH_INDEX),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["skulens", "monitoring", "drift"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5), "owner": "skulens"},
    params={
        "current_hours": Param(None, type=["null", "number"], exclusiveMinimum=0,
                               description="current window in hours (default monitoring.drift.current_hours)"),
        "reference_days": Param(None, type=["null", "number"], exclusiveMinimum=0,
                                description="reference window in days (default monitoring.drift.reference_days)"),
    },
)
def monitor_drift():
    @task(outlets=[DRIFT])
    def check() -> dict:
        from airflow.exceptions import AirflowSkipException

        from skulens.pipelines.monitor_drift import monitor_drift as run
        from skulens.pipelines.monitor_drift import with_windows
        from skulens.settings import load_settings

        context = get_current_context()
        params = context["params"]
        settings = with_windows(load_settings(), params.get("current_hours"), params.get("reference_days"))
        decision = run(settings, context["run_id"].replace(":", "_").replace("+", "_"))
        if not decision["triggered"]:
            raise AirflowSkipException("stable: no check drifted")
        context["outlet_events"][DRIFT].extra = {"reason": "; ".join(decision["reasons"])[:2000],
                                                 "run_id": decision["run_id"]}
        return {"triggered": True, "reasons": decision["reasons"]}

    check()


monitor_drift()
