"""Shared fixtures: an isolated SKULENS_HOME per test and the bundled real datasets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from skulens.settings import Settings, find_project_root, load_settings

# Airflow reads its configuration when it is first imported: set it up before any test does.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="skulens-airflow-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parents[1] / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__PARALLELISM"] = "4"
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
os.environ.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


PROJECT_ROOT = find_project_root(Path(__file__).parent)
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reads a developer's SKULENS_* variables or writes into ./var."""
    import os

    for key in list(os.environ):
        if key.startswith("SKULENS"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SKULENS_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.setenv("SKULENS_PROJECT_ROOT", str(PROJECT_ROOT))


@pytest.fixture
def settings() -> Settings:
    """Local-profile settings with a fresh SKULENS_HOME."""
    return load_settings("local")


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The bundled real datasets (../shared/datasets); tests that need them skip without them."""
    root = (PROJECT_ROOT / ".." / "shared" / "datasets").resolve()
    if not (root / "fashion" / "styles.csv").is_file():
        pytest.skip(f"bundled datasets not found at {root}")
    return root


@pytest.fixture(scope="session")
def airflow_db():
    """A fresh Airflow metadata database (SQLite under a temporary AIRFLOW_HOME)."""
    from airflow.utils import db

    db.resetdb()
    return _AIRFLOW_HOME
