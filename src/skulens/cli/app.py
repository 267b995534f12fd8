"""``skulens``: the command line of the platform. Every command has ``--help``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from skulens import __version__
from skulens.cli import airflow, datasets, experiments, index, models, pipeline, stream
from skulens.cli.common import console, fail_on_errors, settings_from
from skulens.cli.evaluate import eval_command
from skulens.cli.serve import serve_command

app = typer.Typer(
    name="skulens",
    help="Multimodal product search and recommendation, with the pipeline that keeps it fresh.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
app.add_typer(datasets.app, name="datasets")
app.add_typer(pipeline.app, name="pipeline")
app.add_typer(airflow.app, name="airflow")
app.add_typer(models.app, name="models")
app.add_typer(index.app, name="index")
app.add_typer(stream.app, name="stream")
app.add_typer(experiments.app, name="experiments")
app.command("eval")(eval_command)
app.command("serve")(serve_command)
config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def _version(value: bool) -> None:
    if value:
        console.print(f"skulens {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    profile: Annotated[str | None, typer.Option(
        "--profile", help="Configuration profile: local (default) or production.",
        envvar="SKULENS_PROFILE")] = None,
    home: Annotated[Path | None, typer.Option(
        "--home", help="Data root for all local state (default ./var; env SKULENS_HOME).")] = None,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Global options apply to every command."""
    if profile:
        os.environ["SKULENS_PROFILE"] = profile
    if home:
        os.environ["SKULENS_HOME"] = str(home.resolve())


@config_app.command("show")
@fail_on_errors
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Print the resolved configuration (profile + files + environment), passwords masked."""
    import json

    import yaml

    data = settings_from().redacted()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(yaml.safe_dump(data, sort_keys=False))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
