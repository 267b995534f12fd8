"""``skulens airflow``: Airflow 3 for real on this machine (api-server, scheduler, dag-processor,
triggerer on the embedded SQLite) with the project's DAGs on their schedules."""

from __future__ import annotations

import signal
import time
from typing import Annotated

import typer

from skulens.cli.common import console, fail_on_errors, settings_from

app = typer.Typer(help="Start, stop and inspect a local Airflow running the project's DAGs.",
                  no_args_is_help=True)


def _print_login(settings, pid: int, password: str) -> None:  # noqa: ANN001
    console.print(f"[green]Airflow is up[/] (pid {pid}): the UI is at [bold]{settings.airflow.api_url}/[/]")
    console.print(f"  login: [bold]{settings.airflow.username}[/] / [bold]{password}[/] "
                  f"(generated; kept in {settings.airflow.home}/simple_auth_manager_passwords.json.generated)")
    console.print(f"  log: {settings.airflow.home}/logs/standalone.log", highlight=False)


@app.command("up")
@fail_on_errors
def up(
    foreground: Annotated[bool, typer.Option(
        "--foreground", help="Stay attached and stop Airflow on Ctrl-C (what `make airflow` does).")] = False,
    paused: Annotated[bool, typer.Option(
        "--paused", help="Leave new DAGs paused (default: their schedules are switched on).")] = False,
    timeout_s: Annotated[float, typer.Option(help="How long to wait for a healthy API.")] = 180,
) -> None:
    """Start Airflow (``airflow standalone``) with the project's DAGs and print the UI's address
    and login. Schedules: catalog_ingest daily, refresh_features every 15 minutes, monitor_drift
    hourly, train_ranker daily; train_and_export, build_index and deploy_canary by their assets."""
    from skulens.orchestration.airflow import start_local, stop_local

    settings = settings_from()
    with console.status("starting Airflow (migrating its database, parsing the DAGs) ...") as status:
        pid, password = start_local(settings, paused=paused, timeout_s=timeout_s,
                                    on_wait=lambda s: status.update(f"starting Airflow ... {s:.0f} s"))
    _print_login(settings, pid, password)
    if not foreground:
        console.print("stop it with `skulens airflow down`")
        return
    console.print("Ctrl-C stops it")

    def _stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        with console.status("stopping Airflow ..."):
            stop_local(settings)
        console.print("Airflow stopped")


@app.command("down")
@fail_on_errors
def down() -> None:
    """Stop the local Airflow that `skulens airflow up` started (all its processes)."""
    from skulens.orchestration.airflow import stop_local

    with console.status("stopping Airflow ..."):
        stopped = stop_local(settings_from())
    console.print("Airflow stopped" if stopped else "no local Airflow was running")


@app.command("status")
@fail_on_errors
def status() -> None:
    """Whether Airflow answers, and every DAG with its schedule and whether it is paused."""
    from skulens.orchestration.airflow import AirflowClient, client_for

    settings = settings_from()
    if not AirflowClient(settings.airflow.api_url, settings.airflow.username, None).healthy():
        console.print(f"Airflow at {settings.airflow.api_url} is not healthy or not running")
        raise typer.Exit(code=1)
    console.print(f"Airflow at {settings.airflow.api_url}: healthy")
    for dag in sorted(client_for(settings).dags(), key=lambda d: d["dag_id"]):
        state = "paused" if dag["is_paused"] else "on"
        console.print(f"  {dag['dag_id']:<20} {state:<7} {dag.get('timetable_description') or ''}",
                      highlight=False)
