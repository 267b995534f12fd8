"""Shared fixtures: an isolated SKULENS_HOME per test and the bundled real datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from skulens.settings import Settings, find_project_root, load_settings

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
