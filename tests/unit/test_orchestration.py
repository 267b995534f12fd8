"""What ``skulens airflow`` and ``skulens pipeline trigger`` hand to Airflow."""

from __future__ import annotations

import pytest

from skulens.orchestration.airflow import AirflowError, airflow_env, parse_params, password_for


def test_params_parse_as_json_values_else_strings_and_a_pair_without_equals_is_an_error():
    assert parse_params(["epochs=3", "config=offline", "max_train_products=null", "on=true", "x=a=b"]) == {
        "epochs": 3, "config": "offline", "max_train_products": None, "on": True, "x": "a=b"}
    with pytest.raises(ValueError, match="expected key=value"):
        parse_params(["epochs"])


def test_every_airflow_process_reports_to_the_configured_api_address(settings, monkeypatch):
    settings = settings.model_copy(update={"airflow": settings.airflow.model_copy(
        update={"api_url": "http://127.0.0.1:18123"})})
    env = airflow_env(settings, paused=True, base={"PATH": "/usr/bin"})
    assert env["AIRFLOW__API__PORT"] == "18123"
    # The task runner's default is localhost:8080: a moved api-server must be named to it.
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18123/execution/"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"].endswith("dags") and env["PATH"].endswith("/usr/bin")
    assert airflow_env(settings, base={})["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"


def test_no_password_is_a_readable_error(settings, monkeypatch):
    monkeypatch.delenv(settings.airflow.password_env, raising=False)
    with pytest.raises(AirflowError, match="skulens airflow up"):
        password_for(settings)
    monkeypatch.setenv(settings.airflow.password_env, "s3cret")
    assert password_for(settings) == "s3cret"
