"""``SKULENS_PROFILE=production`` against real servers started here: PostgreSQL (Airflow's and
MLflow's metadata, the pipelines' run log), an MLflow tracking server on it with its artefacts in an
S3-compatible bucket (moto's server: the stand-in for MinIO/S3), the same bucket holding the
published tables, prepared catalogue, training pairs and indexes, and Redis (online features and the
serving workers' shared state). catalog_ingest -> train_and_export -> build_index run through the
CLI (Airflow's ``dag.test`` on the Postgres metadata database), then ``skulens serve`` answers from
an index it reads from the bucket.

What cannot run here is overridden in the environment and said so: the Spark cluster
(``spark://spark-master:7077``) becomes ``local[2]``, dbt's Spark thrift target DuckDB, and the
Kafka event stream files (no broker can be installed on these machines).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from skulens.pipelines.train_and_export import STAGES as TRAIN_STAGES
from tests.support.servers import S3_KEYS, free_port, mlflow_server, postgres, redis, s3_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def production(tmp_path_factory, shared_datasets):
    root = tmp_path_factory.mktemp("production")
    with postgres(root / "pg") as pg, redis(root) as redis_url, s3_server(root) as s3:
        host, port = pg.split(":")
        env = {
            "SKULENS_PROFILE": "production", "SKULENS_HOME": str(root / "home"), "SKULENS_PROGRESS": "0",
            "POSTGRES_HOST": host, "POSTGRES_PORT": port, "POSTGRES_USER": "skulens", "POSTGRES_PASSWORD": "skulens",
            "POSTGRES_DB": "skulens", "SKULENS_S3_BUCKET": "skulens", "SKULENS_S3_ENDPOINT": s3,
            "MLFLOW_S3_ENDPOINT_URL": s3, "SKULENS_REDIS_URL": redis_url, **S3_KEYS,
            # What cannot run here (see the module's docstring):
            "SPARK_MASTER_URL": "local[2]", "SKULENS__SPARK__CONF__spark.sql.shuffle.partitions": "8",
            "SKULENS__SPARK__CONF__spark.executor.memory": "1g", "SKULENS__DBT__TARGET": "duckdb",
            "SKULENS__STREAM__BACKEND": "files", "SKULENS__AIRFLOW__HOME": str(root / "home" / "airflow"),
            "SKULENS__AIRFLOW__PARALLELISM": "4", "SKULENS_ADMIN_KEY": "production-key",
        }
        backend = f"postgresql+psycopg2://skulens:skulens@{pg}/mlflow"
        with mlflow_server(root, backend, "s3://skulens/mlflow-artifacts", env) as tracking:
            env["MLFLOW_TRACKING_URI"] = tracking
            yield env, root


def _skulens(env: dict, *args: str, timeout_s: float = 1800) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "skulens", *args], env={**os.environ, **env, "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"skulens {' '.join(args)}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def _fashion_subset(shared, folder, rows: int = 4000):
    """The first ``rows`` records of the real fashion catalogue (and every photo): a smaller Spark run."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images").exists():
        os.symlink(shared / "fashion" / "images", folder / "images")
    with (shared / "fashion" / "styles.csv").open(encoding="utf-8") as src, \
            (folder / "styles.csv").open("w", encoding="utf-8", newline="") as dst:
        writer = csv.writer(dst)
        for i, row in enumerate(csv.reader(src)):
            if i > rows:
                break
            writer.writerow(row)
    return folder


def test_the_chain_runs_on_postgres_mlflow_s3_and_redis_and_serves_from_the_bucket(production, shared_datasets):
    import boto3
    import psycopg2

    env, root = production
    fashion = _fashion_subset(shared_datasets, root / "fashion")
    _skulens(env, "datasets", "build", "--only", "homedepot")
    _skulens(env, "datasets", "simulate-events", "--catalog", "homedepot", "--users", "300", "--days", "3")
    _skulens(env, "pipeline", "catalog-ingest", "--fashion-root", str(fashion))
    _skulens(env, "pipeline", "train-and-export", "--epochs", "4", "--max-train-products", "1500",
             "--reranker-config", "reranker-tiny")
    _skulens(env, "pipeline", "build-index")

    # Every metadata store is the Postgres server: Airflow's runs, MLflow's registry, the run log.
    with psycopg2.connect(host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"], user="skulens",
                          password="skulens", dbname="airflow") as db, db.cursor() as cursor:
        cursor.execute("select dag_id, state from dag_run order by dag_id")
        assert cursor.fetchall() == [("build_index", "success"), ("catalog_ingest", "success"),
                                     ("train_and_export", "success")]
    with psycopg2.connect(host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"], user="skulens",
                          password="skulens", dbname="mlflow") as db, db.cursor() as cursor:
        cursor.execute("select name, alias from registered_model_aliases order by name, alias")
        assert ("skulens-embedder", "champion") in cursor.fetchall()
    with psycopg2.connect(host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"], user="skulens",
                          password="skulens", dbname="skulens") as db, db.cursor() as cursor:
        cursor.execute("select pipeline, count(*) from skulens_stage_runs group by pipeline order by pipeline")
        stages = dict(cursor.fetchall())
        # Every train_and_export stage records its run (the text encoder's four say "skipped" here).
        assert stages["catalog_ingest"] >= 6 and stages["train_and_export"] == len(TRAIN_STAGES)
        assert stages["build_index"] >= 5

    # The bucket holds the published versions (pointer last) and MLflow's artefacts.
    s3 = boto3.client("s3", endpoint_url=env["SKULENS_S3_ENDPOINT"], region_name="us-east-1",
                      aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="skulens")
            for o in page.get("Contents", [])]
    pointer = s3.get_object(Bucket="skulens", Key="skulens/indexes/fashion/CURRENT")
    index_version = pointer["Body"].read().decode().strip()
    assert any(k.startswith(f"skulens/indexes/fashion/versions/{index_version}/vector/") for k in keys)
    for published in ("skulens/tables/fashion/CURRENT", "skulens/prepared/fashion/CURRENT", "skulens/pairs/CURRENT"):
        assert published in keys
    assert any(k.startswith("mlflow-artifacts/") or k.startswith("mlflow/") for k in keys)

    # A serving machine with an empty home: the index comes from the bucket, models from MLflow.
    serving_env = {**env, "SKULENS_HOME": str(root / "serving-home")}
    port = free_port()
    log = (root / "serve.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "skulens", "serve", "--port", str(port), "--workers", "2"],
                              env={**os.environ, **serving_env}, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
        while True:
            assert server.poll() is None, (root / "serve.log").read_text(errors="replace")[-3000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not become ready in 300 s"
            time.sleep(2)
        body = httpx.post(f"{base}/search", json={"text": "blue denim shirt", "k": 5}, timeout=60).json()
        assert body["items"] and body["versions"]["index"] == index_version, body
        assert (root / "serving-home" / "indexes" / "fashion" / "versions" / index_version).is_dir()
        # The workers share their routing through Redis: an admin change is one document there.
        import redis as redis_client

        changed = httpx.post(f"{base}/admin/traffic", json={"control": 1.0},
                             headers={"X-API-Key": "production-key"}, timeout=30)
        assert changed.status_code == 200, changed.text
        keys = redis_client.Redis.from_url(env["SKULENS_REDIS_URL"]).keys("skulens:control:*")
        assert keys, "no routing document in Redis"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    assert json.loads((root / "home" / "reports" / "build_index" / "latest.json").read_text())["status"] == "success"
