"""Rules for every DAG file, as tests (import errors, tags, retries, light top-level imports)."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import PROJECT_ROOT

DAG_FILES = sorted((PROJECT_ROOT / "dags").glob("*.py"))
ALLOWED_TOP_LEVEL = {"__future__", "datetime", "airflow", "pendulum", "typing"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_there_are_dag_files():
    assert DAG_FILES


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_without_errors(dagbag, path):
    assert str(path) not in dagbag.import_errors, dagbag.import_errors.get(str(path))


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_no_heavy_imports_at_top_level(path):
    """Heavy libraries (skulens' Spark, GX, dbt code, pandas, torch) are imported inside tasks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in ALLOWED_TOP_LEVEL, f"{path.name}: top-level import of {name}"


def test_dag_policies(dagbag):
    assert dagbag.dags, "no DAGs found"
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags and "skulens" in dag.tags, f"{dag_id}: needs tags including 'skulens'"
        assert dag.doc_md and len(dag.doc_md) > 100, f"{dag_id}: needs doc_md"
        assert dag.default_args.get("retries", 0) >= 1, f"{dag_id}: default retries must be >= 1"
        assert dag.max_active_runs == 1, f"{dag_id}: one run at a time (pipelines publish shared outputs)"
        assert not dag.catchup


def test_catalog_ingest_shape(dagbag):
    dag = dagbag.dags["catalog_ingest"]
    order = ["validate_raw", "prepare_catalog", "gate_prepared", "build_pairs", "gate_pairs", "dbt_build"]
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    # Gates do not retry: bad data is not transient.
    for task_id in ("validate_raw", "gate_prepared", "gate_pairs", "dbt_build", "report"):
        assert dag.get_task(task_id).retries == 0
    assert dag.get_task("prepare_catalog").retries == 2
    assert dag.get_task("report").trigger_rule == "all_done"
    outlets = {a.name for t in dag.tasks for a in t.outlets}
    assert outlets == {"skulens_prepared_catalog", "skulens_training_pairs", "skulens_marts"}


def test_refresh_features_runs_the_stream_every_15_minutes_then_checks_dead_letters(dagbag):
    from datetime import timedelta

    dag = dagbag.dags["refresh_features"]
    assert dag.get_task("check_dead_letters").upstream_task_ids == {"stream_once"}
    assert dag.get_task("check_dead_letters").retries == 0
    assert f"delta={timedelta(minutes=15)!r}" in repr(dag.timetable)


def test_the_dead_letter_check_names_the_rule_and_ignores_resends():
    from skulens.pipelines.refresh_features import DeadLetterError, check_dead_letters

    fine = {"lines": 100, "events": 300, "dead": {"duplicate": 40, "json": 2}, "batches": [0], "orphaned": 0,
            "features": 10}
    assert check_dead_letters(fine, 0.05)["dead_share"] == 0.02
    with pytest.raises(DeadLetterError, match="most often 'type:time' \\(7\\)"):
        check_dead_letters({**fine, "dead": {"type:time": 7, "json": 2}}, 0.05)


def test_the_ranker_dags_train_daily_from_scratch_and_hourly_incrementally(dagbag):
    daily, hourly = dagbag.dags["train_ranker"], dagbag.dags["train_ranker_hourly"]
    assert daily.params["incremental"] is False and hourly.params["incremental"] is True
    assert "@daily" in repr(daily.timetable) or "0 0 * * *" in repr(daily.timetable)
    assert "@hourly" in repr(hourly.timetable) or "0 * * * *" in repr(hourly.timetable)
    assert daily.get_task("train").retries == 0


def test_deploy_canary_follows_new_indexes_and_champions_and_never_retries(dagbag):
    dag = dagbag.dags["deploy_canary"]
    names = {asset.name for asset in dag.timetable.asset_condition.objects}
    assert names == {"skulens_search_index", "skulens_champion_reranker", "skulens_champion_ranker"}
    assert dag.get_task("rollout").retries == 0
    assert set(dag.params.keys()) == {"index_version", "reranker_version", "ranker_version", "hold_s"}


def test_a_refused_gate_emits_no_asset_event():
    """Gate tasks skip (a skipped task emits no asset event) when the champion did not change."""
    source = (PROJECT_ROOT / "dags" / "train_and_export.py").read_text(encoding="utf-8")
    assert "AirflowSkipException" in source and "_only_if_promoted(p.gate_reranker" in source
    assert "_only_if_promoted(p.gate_embedder" in source


def test_monitor_drift_runs_hourly_and_after_index_builds_and_its_asset_schedules_retraining(dagbag):
    drift = dagbag.dags["monitor_drift"]
    assert {a.name for t in drift.tasks for a in t.outlets} == {"skulens_drift"}
    assert drift.timetable.asset_condition.name == "skulens_search_index"
    assert "hourly" in drift.timetable.summary or "0 * * * *" in drift.timetable.summary
    train = dagbag.dags["train_and_export"]
    assert {a.name for a in train.timetable.asset_condition.objects} == {"skulens_training_pairs", "skulens_drift"}
