"""The ``monitor_drift`` DAG for real (Airflow's ``dag.test()``) over the events table as the stream
job writes it (Parquet by date and batch): a stable simulated period ends its task skipped (no
asset event, so ``train_and_export`` is not scheduled); a shifted one succeeds and emits the
``skulens_drift`` asset event naming the reason. (Simulated traffic.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from skulens.data.query_shift import simulated_searches

pytestmark = pytest.mark.integration


def _write_events(settings, shifted: bool) -> None:
    from skulens.storage.layout import stream_paths

    rng = np.random.default_rng(11)
    now = datetime.now(UTC)
    days = [simulated_searches(now - timedelta(hours=24 * (4 - day)), 24, rng, shift=0.5 if shifted and day == 3
                               else 0.0, typos=0.3 if shifted and day == 3 else 0.0) for day in range(4)]
    events = pd.concat(days, ignore_index=True)
    events = events[events["ts"] < now]
    folder = stream_paths(settings).events / f"date={now:%Y-%m-%d}" / "batch_id=0"
    folder.mkdir(parents=True, exist_ok=True)
    events.assign(catalog="fashion", versions="{}").to_parquet(folder / "part-0.parquet", index=False)


@pytest.mark.parametrize("shifted", [False, True], ids=["stable", "shifted"])
def test_the_dag_triggers_retraining_only_on_a_shift(shifted, airflow_db, monkeypatch, tmp_path):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    from skulens.settings import load_settings
    from tests.conftest import PROJECT_ROOT

    monkeypatch.setenv("SKULENS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SKULENS__MONITORING__DRIFT__REFERENCE_DAYS", "3")
    settings = load_settings("local")
    _write_events(settings, shifted)
    with create_session() as session:
        before = session.query(AssetEvent).count()
    run = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).dags["monitor_drift"].test()
    assert run.state == DagRunState.SUCCESS
    state = run.get_task_instance("check").state
    with create_session() as session:
        events = [(e.asset.name, e.extra) for e in session.query(AssetEvent).order_by(AssetEvent.id).all()[before:]]
    if shifted:
        assert state == TaskInstanceState.SUCCESS
        assert [name for name, _ in events] == ["skulens_drift"] and "query_text" in events[0][1]["reason"]
    else:
        assert state == TaskInstanceState.SKIPPED and events == []
    assert list((settings.reports_dir / "drift").glob("*/query_text.html"))
