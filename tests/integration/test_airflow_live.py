"""Airflow 3 for real: ``skulens airflow up`` starts the api-server, scheduler, dag-processor and
triggerer on SQLite; every DAG is there on its schedule; ``skulens pipeline trigger`` runs one
through the REST API with params and follows it to success; a bad param is refused before a run
exists; a second ``up`` is refused; the UI's DAG page renders in headless Chromium (screenshot
kept); ``down`` stops it all."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from skulens.orchestration.airflow import client_for, running_pid, start_local, stop_local
from skulens.settings import load_settings
from tests.support.browser import chromium, screenshot_with_cookie

pytestmark = pytest.mark.integration

SCHEDULES = {  # DAG -> what Airflow says of its schedule
    "catalog_ingest": "At 00:00",
    "refresh_features": "0:15:00",
    "monitor_drift": "Triggered by assets or Every hour",
    "train_ranker": "At 00:00",
    "train_ranker_hourly": "Every hour",
    "train_and_export": "Triggered by assets",
    "build_index": "Triggered by assets",
    "deploy_canary": "Triggered by assets",
}


@pytest.fixture
def airflow(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SKULENS__AIRFLOW__API_URL", f"http://127.0.0.1:{port}")
    settings = load_settings()
    # Paused: a switched-on daily catalog_ingest would start a full Spark run in the test.
    pid, password = start_local(settings, paused=True, timeout_s=300)
    try:
        yield settings, password
    finally:
        stop_local(settings)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # every process of the group is gone


def _skulens(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skulens", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})


def test_airflow_runs_the_dags_triggered_with_params_through_its_rest_api(airflow):
    settings, password = airflow
    client = client_for(settings)
    for dag_id in SCHEDULES:
        client.wait_for_dag(dag_id)
    dags = {d["dag_id"]: d for d in client.dags()}
    assert {dag_id: dags[dag_id]["timetable_description"] or str(dags[dag_id].get("timetable_summary"))
            for dag_id in SCHEDULES} == SCHEDULES

    done = _skulens("pipeline", "trigger", "monitor_drift", "--param", "current_hours=6", "--param",
                    "reference_days=2", "--timeout-s", "300")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "monitor_drift run manual__" in done.stdout and "success" in done.stdout
    run_id = done.stdout.split("triggered monitor_drift run ")[1].split()[0]
    run = client.run("monitor_drift", run_id)
    assert run["conf"] == {"current_hours": 6, "reference_days": 2} and run["run_type"] == "manual"
    # Stable (no searches yet): the task ends skipped, so no drift asset event schedules retraining.
    assert client.task_states("monitor_drift", run_id) == {"check": "skipped"}

    refused = _skulens("pipeline", "trigger", "monitor_drift", "--param", "current_hours=-1", "--no-wait")
    assert refused.returncode == 1 and "HTTP 400" in refused.stderr, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr

    again = _skulens("airflow", "up", "--paused", "--timeout-s", "30")
    assert again.returncode == 1 and "already running" in again.stderr and running_pid(settings) is not None

    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI (scripts/setup.sh installs it)")
        return
    token = client._login()
    shot = settings.project_root / "test-artifacts" / "airflow_dag_page.png"
    text = screenshot_with_cookie(f"{settings.airflow.api_url}/dags/monitor_drift",
                                  {"name": "_token", "value": token}, shot)
    assert "monitor_drift" in text and "skulens_search_index" in text and "Latest Run" in text, text[:500]
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one

