"""Real servers started on loopback for the production-backend tests: PostgreSQL (Debian's
binaries), Redis (Debian's ``redis-server``), an S3-compatible server (moto's, from PyPI: the
stand-in for S3/MinIO here) and an MLflow tracking server on that Postgres and bucket."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
S3_KEYS = {"AWS_ACCESS_KEY_ID": "skulens-test", "AWS_SECRET_ACCESS_KEY": "skulens-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing(what: str, package: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing on CI (scripts/setup.sh installs Debian's {package})")
    pytest.skip(f"{what} is not installed (Debian's {package} package)")


def wait_for_port(port: int, timeout_s: float = 30, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server on port {port} exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s") from None
            time.sleep(0.1)


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(PG_BIN.parent.parent.glob("*/bin"), reverse=True):  # Debian's /usr/lib/postgresql/N/bin
        if (folder / name).is_file():
            return str(folder / name)
    return None


@contextlib.contextmanager
def postgres(folder: Path, databases: tuple[str, ...] = ("skulens", "airflow", "mlflow")) -> Iterator[str]:
    """A PostgreSQL server on a free port with ``databases``; yields ``host:port`` (user skulens,
    password skulens). As root the server runs as the ``postgres`` user (it refuses root)."""
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        _missing("PostgreSQL", "postgresql")
    as_user: list[str] = []
    if os.geteuid() == 0:
        # The server refuses to run as root: it runs as ``postgres``, in a folder that user can
        # reach (pytest's temporary folders are private to root).
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="skulens-pg-"))
        os.chmod(folder, 0o755)
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder.mkdir(parents=True, exist_ok=True)
    data, port = folder / "pgdata", free_port()
    password = folder / "pwfile"
    password.write_text("skulens\n")
    if as_user:
        shutil.chown(password, "postgres")
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "skulens", "--auth=md5", f"--pwfile={password}",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "postgres.log"), "-w",
                    "start"], check=True, capture_output=True, timeout=120)
    try:
        import psycopg2

        with contextlib.closing(psycopg2.connect(host="127.0.0.1", port=port, user="skulens", password="skulens",
                                                 dbname="postgres")) as connection:
            connection.autocommit = True
            with connection.cursor() as cursor:
                for name in databases:
                    cursor.execute(f"CREATE DATABASE {name}")
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True,
                       timeout=120)
        if as_user:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def redis(folder: Path) -> Iterator[str]:
    """Debian's redis-server on a free port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server", "redis-server")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def s3_server(folder: Path, buckets: tuple[str, ...] = ("skulens",)) -> Iterator[str]:
    """moto's S3-compatible server (the stand-in for S3/MinIO) with ``buckets``; yields its URL.
    Credentials: :data:`S3_KEYS` (moto accepts any)."""
    port = free_port()
    log = (folder / "s3.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, process=process)
        import boto3

        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@contextlib.contextmanager
def mlflow_server(folder: Path, backend_uri: str, artifacts: str, env: dict[str, str]) -> Iterator[str]:
    """``mlflow server`` (one worker, no job execution: this machine has 2 cores) on a free port;
    yields its URL once ``/health`` answers."""
    import httpx

    port = free_port()
    log = (folder / "mlflow.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder,
        env={**os.environ, **env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start; see {folder / 'mlflow.log'}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        process.wait(timeout=60)
        log.close()
