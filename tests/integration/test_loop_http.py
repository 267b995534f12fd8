"""The loop over real HTTP: a search, a click sent to ``POST /events`` as the web page sends it, the
``refresh_features`` DAG (the stream job), and the next search for that product carrying the click
in its ranking input."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from skulens.serving.app import create_app
from tests.support.live_server import serve_app
from tests.unit.test_serving_app import client  # noqa: F401 - the fixture
from tests.unit.test_serving_pipeline import parts  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


def test_a_click_reaches_the_online_features_and_the_next_search(client, airflow_db):  # noqa: F811
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    from tests.conftest import PROJECT_ROOT

    state = client.state_obj
    state.start_loop()  # the event log (files under SKULENS_HOME/stream/landing) and the feature cache
    settings = state.settings
    try:
        with serve_app(create_app(lambda: state)) as base, httpx.Client(base_url=base, timeout=30) as http:
            first = http.post("/search", json={"text": "red shirt", "k": 5, "session_id": "shopper-1"}).json()
            assert all("ctr_prior" not in item["scores"] for item in first["items"])  # no events yet
            clicked = first["items"][1]
            event = {"event_id": str(uuid.uuid4()), "type": "click", "search_id": first["search_id"],
                     "product_id": clicked["product_id"], "position": 2}
            sent = http.post("/events", json={"events": [event]})  # the body app.js sends
            assert sent.json() == {"accepted": 1, "duplicates": []}
            time.sleep(settings.stream.rotate_s + 0.5)  # the writer publishes its file

            # The refresh_features DAG (Airflow's dag.test(): its tasks for real, in this process).
            run = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).dags["refresh_features"].test()
            assert run.state == DagRunState.SUCCESS

            deadline = time.time() + 30
            scores: dict = {}
            while time.time() < deadline:
                again = http.post("/search", json={"text": "red shirt", "k": 5}).json()
                scores = {i["product_id"]: i["scores"] for i in again["items"]}
                if "ctr_prior" in scores.get(clicked["product_id"], {}):
                    break
                time.sleep(0.5)
            others = [s["ctr_prior"] for pid, s in scores.items() if pid != clicked["product_id"] and "ctr_prior" in s]
            assert "ctr_prior" in scores[clicked["product_id"]], scores
            assert others and scores[clicked["product_id"]]["ctr_prior"] > max(others)  # only it was clicked
            assert "features_unavailable" not in again["fallbacks"] and "features_stale" not in again["fallbacks"]
    finally:
        state.stop()
