from pathlib import Path

import pytest

from skulens.settings import ConfigError, load_settings

PROD_ENV = {"POSTGRES_PASSWORD": "s3cret", "SKULENS_S3_BUCKET": "shop-artefacts"}


def test_local_profile_uses_embedded_defaults(settings, tmp_path):
    assert settings.profile == "local"
    assert settings.database.url.startswith("sqlite:///")
    assert settings.spark.master == "local[2]"
    assert settings.stream.backend == "files"
    assert settings.dbt.target == "duckdb"
    assert settings.storage.backend == "local"
    # Every local path lives under SKULENS_HOME.
    for path in (settings.airflow.home, settings.dbt.duckdb_path, settings.stream.files_dir,
                 settings.storage.local_root):
        assert Path(path).is_relative_to(settings.home)
    assert str(settings.home) in settings.mlflow.tracking_uri
    assert settings.spark.conf["spark.ui.enabled"] == "false"


def test_home_defaults_to_var_in_project_root(monkeypatch):
    monkeypatch.delenv("SKULENS_HOME")
    settings = load_settings("local")
    assert settings.home == settings.project_root / "var"


def test_environment_overrides_nested_keys(monkeypatch):
    monkeypatch.setenv("SKULENS__SPARK__MASTER", "spark://cluster:7077")
    monkeypatch.setenv("SKULENS__DATASETS__MAX_REJECT_FRACTION", "0.2")
    settings = load_settings("local")
    assert settings.spark.master == "spark://cluster:7077"
    assert settings.datasets.max_reject_fraction == 0.2


def test_invalid_value_names_the_key(monkeypatch):
    monkeypatch.setenv("SKULENS__SPARK__MASTER", "not a master")
    with pytest.raises(ConfigError, match=r"spark\.master"):
        load_settings("local")


def test_unknown_key_is_rejected(monkeypatch):
    monkeypatch.setenv("SKULENS__SPARK__MASTR", "local[2]")
    with pytest.raises(ConfigError, match="mastr"):
        load_settings("local")


def test_production_profile_loads_and_validates(monkeypatch):
    for key, value in PROD_ENV.items():
        monkeypatch.setenv(key, value)
    settings = load_settings("production")
    assert settings.database.url.startswith("postgresql+psycopg2://skulens:s3cret@postgres:5432/")
    assert settings.storage.backend == "s3" and settings.storage.s3.bucket == "shop-artefacts"
    assert settings.spark.master.startswith("spark://")
    assert settings.stream.backend == "kafka"
    assert settings.stream.kafka.bootstrap_servers == "kafka:9092"
    assert settings.dbt.target == "spark" and settings.dbt.spark.host
    assert settings.mlflow.artifact_location == "s3://shop-artefacts/mlflow"
    # Printing never shows the password.
    assert "s3cret" not in str(settings.redacted())


def test_production_without_secret_names_the_variable(monkeypatch):
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="POSTGRES_PASSWORD"):
        load_settings("production")


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile"):
        load_settings("staging")


def test_profile_from_environment(monkeypatch):
    for key, value in PROD_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SKULENS_PROFILE", "production")
    assert load_settings().profile == "production"


def test_broken_yaml_is_reported(tmp_path, monkeypatch):
    (tmp_path / "base.yaml").write_text("home: [unclosed\n")
    (tmp_path / "local.yaml").write_text("{}\n")
    monkeypatch.setenv("SKULENS_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings("local")
