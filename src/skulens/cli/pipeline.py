"""``skulens pipeline``: run a pipeline's DAG on this machine and print its summary."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from skulens.cli.common import console, err_console, fail_on_errors, settings_from

app = typer.Typer(help="Run the pipelines (Airflow DAGs) locally.", no_args_is_help=True)


def _airflow_env(settings) -> None:  # noqa: ANN001
    """Point Airflow at SKULENS_HOME before it is imported (it reads its config on import)."""
    settings.airflow.home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(settings.airflow.home)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(settings.project_root / "dags")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__PARALLELISM"] = str(settings.airflow.parallelism)
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = settings.airflow.sql_alchemy_conn
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


@app.command("catalog-ingest")
@fail_on_errors
def catalog_ingest(
    airflow: Annotated[bool, typer.Option(
        "--airflow/--no-airflow", help="Run through Airflow's dag.test() (default) or call the stages directly.")]
    = True,
    fashion_root: Annotated[Path | None, typer.Option(help="Folder with styles.csv and images/.")] = None,
    homedepot_path: Annotated[Path | None, typer.Option(help="Home Depot-format judgments CSV.")] = None,
) -> None:
    """Raw files -> validated tables -> prepared catalogue -> training pairs -> dbt marts.

    Each stage is gated (rejects, Great Expectations); a failed gate stops the run and leaves the
    previous outputs current. The summary goes to SKULENS_HOME/reports/catalog_ingest/latest.json.
    """
    settings = settings_from()
    conf = {"fashion_root": str(fashion_root.resolve()) if fashion_root else None,
            "homedepot_path": str(homedepot_path.resolve()) if homedepot_path else None}
    if airflow:
        _airflow_env(settings)
        from airflow.dag_processing.dagbag import DagBag
        from airflow.utils import db

        with console.status("initialising the Airflow metadata database ..."):
            db.initdb()
        bag = DagBag(dag_folder=str(settings.project_root / "dags"))
        if bag.import_errors:
            raise ValueError(f"DAG import errors: {bag.import_errors}")
        with console.status("running catalog_ingest (Spark, Great Expectations, dbt) ..."):
            bag.dags["catalog_ingest"].test(run_conf=conf)
    else:
        from skulens.pipelines.catalog_ingest import run_all
        from skulens.storage import new_version_id

        try:
            run_all(settings, f"local__{new_version_id()}", **conf)
        except RuntimeError:
            pass  # the summary below says what failed
    latest = settings.reports_dir / "catalog_ingest" / "latest.json"
    if not latest.is_file():
        raise FileNotFoundError(f"the run wrote no summary ({latest})")
    summary = json.loads(latest.read_text(encoding="utf-8"))
    _print_summary(summary, latest)
    if summary["status"] != "success":
        raise typer.Exit(code=1)


def _print_summary(summary: dict, path: Path) -> None:
    stages = summary["stages"]
    console.print(f"\n[bold]catalog_ingest[/] run {summary['run_id']}: "
                  f"[{'green' if summary['status'] == 'success' else 'red'}]{summary['status']}[/]")
    for name, entry in stages.items():
        line = f"  {name:<16} {entry['status']:<8} {entry['seconds']:>7.1f} s"
        result = entry.get("result") or {}
        if name == "validate_raw" and result:
            line += "  " + ", ".join(f"{c}.{t} {v['rows_out']:,}/{v['rows_in']:,} kept"
                                     for c, tables in result["tables"].items() for t, v in tables.items())
        elif name == "prepare_catalog" and result:
            line += (f"  {result['products']:,} products, {result['with_valid_photo']:,} valid photos, "
                     f"{result['duplicates']:,} near-duplicates, photo rejects {result['photo_rejects_by_rule']}")
        elif name == "build_pairs" and result:
            line += (f"  image-text {result['image_text_by_split']}, query-product {result['query_product_by_split']}, "
                     f"leak-dropped {result['leak_dropped']:,}")
        elif name in ("gate_prepared", "gate_pairs") and result:
            gx = result["gx"] if isinstance(result["gx"], list) else [result["gx"]]
            line += "  " + ", ".join(f"{g['suite']} {g['evaluated']} expectations passed" for g in gx)
        elif name == "dbt_build" and result:
            line += f"  {result['counts']}"
        console.print(line, soft_wrap=True, highlight=False)
        if entry["status"] == "failed":
            err_console.print(f"    [red]{entry['error']}[/]", soft_wrap=True)
    if summary.get("not_run"):
        console.print(f"  not run: {', '.join(summary['not_run'])}")
    console.print(f"summary: {path}")
