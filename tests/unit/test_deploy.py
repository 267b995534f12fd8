"""The production deployment files, checked without a container engine: the compose file (schema,
no default secrets, mounts that exist, images built or pinned), Prometheus' configuration and
rules (promtool), and the Grafana dashboard (every query valid PromQL over series the service
exposes or the rules record, on the provisioned data source)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from skulens.serving.metrics import ServingMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|FERNET|ADMIN_KEY|ACCESS_KEY", re.I)


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def _promtool() -> str:
    if shutil.which("promtool") is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing on CI (scripts/setup.sh installs Debian's prometheus)")
        pytest.skip("promtool is not installed (Debian's prometheus package)")
    return "promtool"


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_the_compose_file_passes_the_compose_specification_schema(tmp_path):
    """check-jsonschema's copy of the compose-spec schema (it ships with the package): a typo'd key,
    a wrong type or an unknown depends_on condition fails here instead of at `docker compose up`."""
    check = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    done = subprocess.run([*check, str(ROOT / "docker-compose.yml")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = _compose()
    broken["services"]["search"]["imagee"] = broken["services"]["search"].pop("image")
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    done = subprocess.run([*check, str(tmp_path / "broken.yml")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "imagee" in done.stdout + done.stderr


def test_every_reference_between_services_volumes_and_secrets_resolves():
    compose = _compose()
    services, volumes, secrets = compose["services"], set(compose["volumes"]), set(compose.get("secrets", {}))
    for name, service in services.items():
        depends = service.get("depends_on") or []
        assert set(depends) <= set(services), f"{name} depends on a service that does not exist"
        for mount in service.get("volumes") or []:
            source = str(mount).split(":")[0]
            assert source.startswith(("./", "/")) or source in volumes, f"{name}: volume {source} is not declared"
        assert set(service.get("secrets") or []) <= secrets, f"{name}: undeclared secret"


def test_the_stack_has_every_part_of_the_design():
    services = _compose()["services"]
    assert {"postgres", "redis", "minio", "kafka", "mlflow", "airflow-api-server", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "search", "stream", "spark-master", "spark-worker",
            "prometheus", "grafana"} <= set(services)
    assert services["spark-master"]["profiles"] == ["spark"]
    assert "--workers" in services["search"]["command"]
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name
        image = service.get("image", "")
        assert ":latest" not in image or "SKULENS_IMAGE" in image, f"{name}: pin third-party images"


def test_no_secret_has_a_default_and_every_secret_is_required():
    """A secret is ``${VAR:?message}``: compose refuses to start without it, and nothing is baked in."""
    found = 0
    for name, service in _compose()["services"].items():
        for key, value in _environment(service).items():
            if SECRET_WORDS.search(key) and not key.endswith(("_FILE", "PASSWORDS_FILE")):
                found += 1
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), f"{name}: {key}={value!r} has a default"
        for item in service.get("command") or []:
            for secret in re.findall(r"PASSWORD[^}]*\}", str(item)):
                assert ":?" in secret, f"{name}: a password in its command has a default"
    assert found >= 10


def test_every_mounted_file_of_the_repository_exists():
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name


def test_prometheus_configuration_and_rules_pass_promtool():
    promtool = _promtool()
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "serving-rules.yml", "slo-rules.yml"],
                 ["test", "rules", "serving-rules.test.yml", "slo-rules.test.yml"]):
        done = subprocess.run([promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def _exposed_series() -> set[str]:
    """Every series name the service's own metrics can expose, and every series the rules record."""
    metrics = ServingMetrics.standalone()
    names = set()
    for family in metrics.registry.collect():
        base = family.name
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}[family.type]
        names |= {base + suffix for suffix in suffixes}
    for path in PROMETHEUS.glob("*-rules.yml"):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


def _series_in(expr: str) -> set[str]:
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_labels))
    return {w for w in words if w.startswith("skulens")}


def test_dashboards_query_valid_promql_over_real_series_on_the_provisioned_source(tmp_path):
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    exposed = _exposed_series()
    assert DASHBOARDS
    rules, unknown = [], []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)) and dashboard["uid"], path.name
        for panel in panels:
            assert panel["datasource"]["uid"] == uid and panel["targets"], panel["title"]
            for target in panel["targets"]:
                rules.append({"record": f"lint:{path.stem.replace('-', '_')}:{panel['id']}_{target['refId']}",
                              "expr": target["expr"]})
                unknown += [f"{panel['title']}: {s}" for s in _series_in(target["expr"]) - exposed]
    assert unknown == []  # a panel over a series nothing exposes would stay empty for ever
    assert {"skulens_stage_seconds_bucket", "skulens_llm_cost_usd_total", "skulens_drift_drifted",
            "skulens_variant_share", "skulens_canary_active", "skulens_fallbacks_total"} <= {
        s for r in rules for s in _series_in(r["expr"])}
    # promtool parses every query (as recording rules): a typo in PromQL fails here, not in Grafana.
    lint = tmp_path / "dashboard-queries.yml"
    lint.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    done = subprocess.run([_promtool(), "check", "rules", str(lint)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_lint_can_fail(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [
        {"record": "lint:x", "expr": "sum by (stage (rate(skulens_stage_seconds_bucket[5m]))"}]}]}))
    done = subprocess.run([_promtool(), "check", "rules", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert _series_in("rate(skulens_no_such_series_total[5m])") - _exposed_series() == {"skulens_no_such_series_total"}
