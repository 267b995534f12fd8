"""Airflow 3 for real: the environment every Airflow process of skulens shares, a local
``airflow standalone`` (api-server, scheduler, dag-processor, triggerer on the embedded SQLite)
started and stopped as one process group, and a small client of Airflow's REST API (``/api/v2``)
that triggers a DAG with params and follows its run.

Airflow is imported by none of this: the local stack is a child process, the API is HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from skulens.settings import Settings

TERMINAL = {"success", "failed"}
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


class AirflowError(RuntimeError):
    """Airflow could not be started, reached or asked (the message says which and why)."""


def airflow_env(settings: Settings, *, paused: bool = False, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every Airflow process: home, DAGs folder, metadata DB, API address,
    parallelism; ``paused`` keeps new DAGs paused (the default switches their schedules on)."""
    env = dict(os.environ if base is None else base)
    api = urlsplit(settings.airflow.api_url)
    host, port = api.hostname or "127.0.0.1", api.port or 8080
    venv_bin = str(Path(sys.executable).parent)
    env.update({
        "AIRFLOW_HOME": str(settings.airflow.home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.project_root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": str(settings.airflow.parallelism),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(paused),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.airflow.sql_alchemy_conn,
        "AIRFLOW__API__HOST": host,
        "AIRFLOW__API__PORT": str(port),
        # Task processes report to the api-server's execution API: same address, not the default.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{host}:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow.username}:admin",
        # Airflow starts its parts by the bare name ``airflow``: this interpreter's bin comes first.
        "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
        "SKULENS_PROJECT_ROOT": str(settings.project_root),
        "SKULENS_HOME": str(settings.home),
    })
    env.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    return env


def pid_file(settings: Settings) -> Path:
    return settings.airflow.home / "skulens-standalone.pid"


def log_file(settings: Settings) -> Path:
    return settings.airflow.home / "logs" / "standalone.log"


def running_pid(settings: Settings) -> int | None:
    """The process group leader of a local Airflow this checkout started, if it still runs."""
    path = pid_file(settings)
    if not path.is_file():
        return None
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return None
    return pid


def start_local(settings: Settings, *, paused: bool = False, timeout_s: float = 180,
                on_wait: Callable[[float], None] | None = None) -> tuple[int, str]:
    """Start ``airflow standalone`` in its own process group (output to :func:`log_file`), wait
    until the API answers and the admin password exists; return ``(pid, password)``."""
    if (pid := running_pid(settings)) is not None:
        raise AirflowError(f"Airflow is already running here (pid {pid}); `skulens airflow down` stops it")
    log = log_file(settings)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(["airflow", "standalone"], env=airflow_env(settings, paused=paused),
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=settings.airflow.home, start_new_session=True)
    pid_file(settings).write_text(str(process.pid))
    started = time.monotonic()
    client = AirflowClient(settings.airflow.api_url, settings.airflow.username, None)
    while True:
        waited = time.monotonic() - started
        if process.poll() is not None:
            pid_file(settings).unlink(missing_ok=True)
            raise AirflowError(f"airflow standalone exited with status {process.returncode}; see {log}")
        if waited > timeout_s:
            stop_local(settings)
            raise AirflowError(f"Airflow did not become healthy within {timeout_s:.0f} s; see {log}")
        password = _generated_password(settings)
        if password is not None and client.healthy():
            return process.pid, password
        if on_wait is not None:
            on_wait(waited)
        time.sleep(1)


def stop_local(settings: Settings, *, timeout_s: float = 60) -> bool:
    """Stop the local Airflow's whole process group (SIGTERM, then SIGKILL); False if none ran."""
    pid = running_pid(settings)
    pid_file(settings).unlink(missing_ok=True)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        _reap(pid)
        time.sleep(0.5)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _generated_password(settings: Settings) -> str | None:
    path = settings.airflow.home / PASSWORDS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(settings.airflow.username)
    except (OSError, ValueError):
        return None


def password_for(settings: Settings) -> str:
    """The API password: the ``airflow.password_env`` variable, else the local generated file."""
    password = os.environ.get(settings.airflow.password_env) or _generated_password(settings)
    if not password:
        raise AirflowError(f"no Airflow password: set {settings.airflow.password_env}, or start a local "
                           "Airflow with `skulens airflow up` (it writes one)")
    return password


@dataclass
class AirflowClient:
    """Airflow's REST API with a JWT from ``/auth/token`` (refreshed when it expires)."""

    url: str
    username: str
    password: str | None
    timeout_s: float = 30
    _token: str | None = field(default=None, repr=False)

    def healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5)
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        parts = response.json()
        return all(parts.get(name, {}).get("status") == "healthy" for name in ("metadatabase", "scheduler"))

    def _login(self) -> str:
        if self.password is None:
            raise AirflowError("no password to log in to Airflow with")
        try:
            response = httpx.post(f"{self.url}/auth/token", json={"username": self.username,
                                                                  "password": self.password},
                                  timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise AirflowError(f"Airflow at {self.url} is not reachable: {exc}") from exc
        if response.status_code >= 400:
            raise AirflowError(f"Airflow refused the login of {self.username!r} "
                               f"(HTTP {response.status_code}): {response.text[:200]}")
        return response.json()["access_token"]

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """``/api/v2`` + path, with the token; AirflowError naming the status and Airflow's detail."""
        for attempt in range(2):
            if self._token is None:
                self._token = self._login()
            try:
                response = httpx.request(method, f"{self.url}/api/v2{path}", timeout=self.timeout_s,
                                         headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
            except httpx.HTTPError as exc:
                raise AirflowError(f"Airflow at {self.url} is not reachable: {exc}") from exc
            if response.status_code == 401 and attempt == 0:
                self._token = None  # expired: log in again once
                continue
            if response.status_code >= 400:
                try:
                    detail = response.json().get("detail", response.text)
                except ValueError:
                    detail = response.text
                raise AirflowError(f"{method} {path}: HTTP {response.status_code}: {str(detail)[:500]}")
            return response.json() if response.content else None
        raise AirflowError(f"{method} {path}: login refused")

    def dags(self) -> list[dict[str, Any]]:
        return self.request("GET", "/dags", params={"limit": 100})["dags"]

    def wait_for_dag(self, dag_id: str, timeout_s: float = 120) -> dict[str, Any]:
        """The DAG once the dag-processor has parsed it (a fresh Airflow needs a few seconds)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.request("GET", f"/dags/{dag_id}")
            except AirflowError as exc:
                if "HTTP 404" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(2)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """Start a manual run with ``conf`` (Airflow checks it against the DAG's params); its run id."""
        body = self.request("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        return body["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        body = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        return {ti["task_id"]: ti["state"] for ti in body["task_instances"]}

    def follow(self, dag_id: str, run_id: str, *, timeout_s: float = 3600, poll_s: float = 3,
               on_change: Callable[[dict[str, str | None]], None] | None = None) -> str:
        """Poll the run until it ends; call ``on_change`` whenever a task's state changes; the final
        run state (``success`` or ``failed``); AirflowError after ``timeout_s``."""
        deadline, seen = time.monotonic() + timeout_s, None
        while True:
            state = self.run(dag_id, run_id)["state"]
            tasks = self.task_states(dag_id, run_id)
            if tasks != seen and on_change is not None:
                on_change(tasks)
            seen = tasks
            if state in TERMINAL:
                return state
            if time.monotonic() > deadline:
                raise AirflowError(f"run {run_id} of {dag_id} still {state} after {timeout_s:.0f} s")
            time.sleep(poll_s)


def client_for(settings: Settings) -> AirflowClient:
    return AirflowClient(settings.airflow.api_url, settings.airflow.username, password_for(settings))


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs into a run conf; values are JSON when they parse (``3``, ``null``,
    ``true``, ``"x"``), else strings. ValueError names a pair without ``=``."""
    conf: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {pair!r}: expected key=value")
        try:
            conf[key.strip()] = json.loads(value)
        except ValueError:
            conf[key.strip()] = value
    return conf
