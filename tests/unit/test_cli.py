import json

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from skulens.cli.app import app
from tests.conftest import FIXTURES, PROJECT_ROOT

runner = CliRunner()


def _command_paths(command, prefix=()):
    yield prefix
    for name, sub in getattr(command, "commands", {}).items():
        yield from _command_paths(sub, (*prefix, name))


@pytest.mark.parametrize("path", list(_command_paths(get_command(app))), ids=" ".join)
def test_every_command_has_help(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "skulens 0.1.0" in result.output


def test_config_show_masks_secrets(monkeypatch):
    monkeypatch.setenv("POSTGRES_PASSWORD", "hunter2")
    result = runner.invoke(app, ["--profile", "production", "config", "show", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["profile"] == "production" and "hunter2" not in result.output
    assert data["database"]["url"].startswith("postgresql+psycopg2://skulens:***@")


def test_import_then_summary_and_issues(tmp_path):
    mapping = PROJECT_ROOT / "configs" / "mappings" / "example.yaml"
    result = runner.invoke(app, ["--home", str(tmp_path), "datasets", "import", str(mapping)])
    assert result.exit_code == 0, result.output
    assert "catalogue mystore" in result.output and "title:title_missing" in result.output
    result = runner.invoke(app, ["--home", str(tmp_path), "datasets", "summary", "--json"])
    summary = json.loads(result.output)
    assert summary["catalogs"]["mystore"]["tables"]["products"]["rows_out"] == 5
    result = runner.invoke(app, ["--home", str(tmp_path), "datasets", "issues", "mystore",
                                 "--kind", "defects", "--rule", "image_not_found"])
    assert result.exit_code == 0
    assert "row 5 [A4] image_uri:image_not_found value='missing.jpg'" in result.output


def test_broken_import_fails_with_reasons(tmp_path):
    mapping = PROJECT_ROOT / "configs" / "mappings" / "example.yaml"
    result = runner.invoke(app, ["--home", str(tmp_path), "datasets", "import", str(mapping),
                                 "--source", str(FIXTURES / "mystore" / "broken.csv")])
    assert result.exit_code == 1
    assert "DataQualityError" in result.output and "price:type:float" in result.output
    assert "Traceback" not in result.output


def test_missing_tables_give_a_hint(tmp_path):
    result = runner.invoke(app, ["--home", str(tmp_path), "datasets", "simulate-events"])
    assert result.exit_code == 1
    assert "skulens datasets build" in result.output


def test_bad_variant_is_explained(tmp_path):
    result = runner.invoke(app, ["--home", str(tmp_path), "datasets", "simulate-events",
                                 "--experiment", "x", "--variant", "control:0.5"])
    assert result.exit_code == 1 and "name=ranker_noise" in result.output


def test_app_is_typer():
    assert isinstance(app, typer.Typer)


def test_serve_workers_and_serving_settings_reach_the_bentoml_service(tmp_path):
    """`skulens serve --workers N` sets SKULENS__SERVING__WORKERS, which the service's decorator reads,
    with the access log switch and admission control from the same settings."""
    import os
    import subprocess
    import sys

    code = ("import json, serving.service as s; print(json.dumps({'config': s.SearchService.config, "
            "'admission': s.app.state.admission.config.max_active}))")
    env = {**os.environ, "SKULENS__SERVING__WORKERS": "3", "SKULENS__SERVING__ACCESS_LOG": "false",
           "SKULENS__SERVING__ADMISSION__MAX_ACTIVE": "7", "BENTOML_DO_NOT_TRACK": "True",
           "SKULENS_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["config"]["workers"] == 3 and seen["config"]["logging"] == {"access": {"enabled": False}}
    assert seen["admission"] == 7
