"""``skulens pipeline``: run a pipeline's DAG on this machine and print its summary."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from skulens.cli.common import console, err_console, fail_on_errors, settings_from

app = typer.Typer(help="Run the pipelines (Airflow DAGs) locally.", no_args_is_help=True)
AirflowOption = Annotated[bool, typer.Option(
    "--airflow/--no-airflow", help="Run through Airflow's dag.test() (default) or call the stages directly.")]


def _print_stages(pipeline_name: str, summary: dict, details: dict | None = None) -> None:
    """The run's status, then one line per stage (with ``details[stage](result)``) and its error."""
    colour = "green" if summary["status"] == "success" else "red"
    console.print(f"\n[bold]{pipeline_name}[/] run {summary['run_id']}: [{colour}]{summary['status']}[/]")
    width = max((len(n) for n in summary["stages"]), default=0) + 2
    for name, entry in summary["stages"].items():
        line = f"  {name:<{width}} {entry['status']:<8} {entry['seconds']:>7.1f} s"
        result, detail = entry.get("result") or {}, (details or {}).get(name)
        if detail and result:
            line += "  " + detail(result)
        console.print(line, soft_wrap=True, highlight=False)
        if entry["status"] == "failed":
            err_console.print(f"    [red]{entry['error']}[/]", soft_wrap=True)
    if summary.get("not_run"):
        console.print(f"  not run: {', '.join(summary['not_run'])}")


def _gx_line(result: dict) -> str:
    gx = result["gx"] if isinstance(result["gx"], list) else [result["gx"]]
    return ", ".join(f"{g['suite']} {g['evaluated']} expectations passed" for g in gx)


CATALOG_INGEST_DETAILS = {
    "validate_raw": lambda r: ", ".join(f"{c}.{t} {v['rows_out']:,}/{v['rows_in']:,} kept"
                                        for c, tables in r["tables"].items() for t, v in tables.items()),
    "prepare_catalog": lambda r: (f"{r['products']:,} products, {r['with_valid_photo']:,} valid photos, "
                                  f"{r['duplicates']:,} near-duplicates, photo rejects {r['photo_rejects_by_rule']}"),
    "build_pairs": lambda r: (f"image-text {r['image_text_by_split']}, query-product {r['query_product_by_split']}, "
                              f"leak-dropped {r['leak_dropped']:,}"),
    "gate_prepared": _gx_line,
    "gate_pairs": _gx_line,
    "dbt_build": lambda r: str(r["counts"]),
}
BUILD_INDEX_DETAILS = {
    "embed": lambda r: (f"{r.get('products', 0):,} products ({r.get('with_image', 0):,} with photo), "
                        f"model {r.get('model_version')}"),
    "build_vector": lambda r: f"recall@10 {r.get('recall@10')}, shards {r.get('shards')}",
    "build_lexical": lambda r: f"{r.get('documents', 0):,} documents",
    "learn_ranking": lambda r: (f"fusion weight {r.get('fusion_weight')}, rerank top {r.get('rerank_depth')} "
                                f"blend {r.get('rerank_blend')} ({r.get('learned_on')})"),
    "publish": lambda r: f"version {r.get('version')} (previous {r.get('previous')})",
}


def _airflow_env(settings) -> None:  # noqa: ANN001
    """Point Airflow at SKULENS_HOME before it is imported (it reads its config on import)."""
    from skulens.orchestration.airflow import airflow_env

    settings.airflow.home.mkdir(parents=True, exist_ok=True)
    os.environ.update(airflow_env(settings))


def _run_dag(settings, dag_id: str, conf: dict, message: str) -> None:  # noqa: ANN001
    """Run one DAG of ``dags/`` in this process with Airflow's ``dag.test()``."""
    _airflow_env(settings)
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    with console.status("initialising the Airflow metadata database ..."):
        db.initdb()
    bag = DagBag(dag_folder=str(settings.project_root / "dags"))
    if bag.import_errors:
        raise ValueError(f"DAG import errors: {bag.import_errors}")
    console.print(message)
    bag.dags[dag_id].test(run_conf=conf)


def _run(settings, pipeline_name: str, conf: dict, airflow: bool, local, message: str  # noqa: ANN001
         ) -> tuple[dict, Path]:
    """Run a pipeline through its DAG (``dag.test()``) or its stages in this process; return the summary."""
    if airflow:
        _run_dag(settings, pipeline_name, conf, message)
    else:
        from skulens.storage import new_version_id

        try:
            local(f"local__{new_version_id()}")
        except RuntimeError:
            pass  # the summary says what failed
    latest = settings.reports_dir / pipeline_name / "latest.json"
    if not latest.is_file():
        raise FileNotFoundError(f"the run wrote no summary ({latest})")
    return json.loads(latest.read_text(encoding="utf-8")), latest


@app.command("catalog-ingest")
@fail_on_errors
def catalog_ingest(
    airflow: AirflowOption = True,
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
    def local(run_id: str) -> None:
        from skulens.pipelines.catalog_ingest import run_all

        run_all(settings, run_id, **conf)

    summary, latest = _run(settings, "catalog_ingest", conf, airflow, local,
                           "running catalog_ingest (Spark, Great Expectations, dbt) ...")
    _print_summary(summary, latest)
    if summary["status"] != "success":
        raise typer.Exit(code=1)


def _print_summary(summary: dict, path: Path) -> None:
    _print_stages("catalog_ingest", summary, CATALOG_INGEST_DETAILS)
    console.print(f"summary: {path}")


@app.command("train-and-export")
@fail_on_errors
def train_and_export(
    airflow: AirflowOption = True,
    config: Annotated[str, typer.Option(help="Two-tower training config (configs/training/NAME.yaml).")] = "offline",
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the config's epochs.")] = None,
    max_train_products: Annotated[int | None, typer.Option(min=2, help="Train on a subset of products.")] = None,
    reranker_config: Annotated[str, typer.Option(help="Reranker training config.")] = "reranker",
    reranker_max_train_pairs: Annotated[int | None, typer.Option(min=1, help="Override reranker pairs.")] = None,
    text_encoder_config: Annotated[str | None, typer.Option(
        help="Also fine-tune the dense text encoder with this config (e.g. text-encoder).")] = None,
) -> None:
    """Train the embedder and the reranker, evaluate against baselines, register challengers in
    MLflow, export ONNX + INT8 behind the parity gate, and promote through the evaluation gate.

    The summary goes to SKULENS_HOME/reports/train_and_export/latest.json.
    """
    settings = settings_from()
    conf = {"config": config, "epochs": epochs, "max_train_products": max_train_products,
            "reranker_config": reranker_config, "reranker_max_train_pairs": reranker_max_train_pairs,
            "text_encoder_config": text_encoder_config, "parity_texts": 512, "parity_images": 256}
    def local(run_id: str) -> None:
        from skulens.pipelines.train_and_export import TrainParams, run_all

        run_all(settings, run_id, TrainParams(**conf))

    summary, latest = _run(settings, "train_and_export", conf, airflow, local,
                           "running train_and_export (open_clip, MLflow, ONNX Runtime) ...")
    _print_train_summary(summary, latest)
    if summary["status"] != "success":
        raise typer.Exit(code=1)


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_train_summary(summary: dict, path: Path) -> None:
    _print_stages("train_and_export", summary)
    info = summary.get("summary", {})
    emb, rr = info.get("embedder", {}), info.get("reranker", {})
    if emb.get("lift"):
        console.print("\n[bold]Embedder, held-out test split[/] (fashion; attribute-derived queries):")
        for row in emb["lift"]:
            console.print(f"  {row['setting']:<58} {row['baseline']:<22} {_fmt(row['before'])} -> "
                          f"{_fmt(row['after'])} ({'+' if (row['delta'] or 0) >= 0 else ''}{_fmt(row['delta'])})",
                          highlight=False)
    if emb.get("parity", {}).get("int8_served") is not None:
        p = emb["parity"]
        console.print(f"  INT8 parity: served {p['int8_served']}, recall@10 {p['recall@10']}"
                      + (f", reasons: {p['reasons']}" if p.get("reasons") else ""), highlight=False)
    if rr.get("test"):
        console.print("[bold]Reranker, held-out Home Depot queries[/] (nDCG@10 over judged candidates):")
        console.print("  " + ", ".join(f"{k} {_fmt(v['nDCG@10'])}" for k, v in rr["test"].items()), highlight=False)
    if rr.get("parity", {}).get("int8_served") is not None:
        p = rr["parity"]
        console.print(f"  INT8 parity: served {p['int8_served']}, nDCG@10 {p['nDCG@10']}, score cosine "
                      f"{_fmt(p['score_cosine'])}" + (f", reasons: {p['reasons']}" if p.get("reasons") else ""),
                      highlight=False)
    te = info.get("text_encoder", {})
    if te.get("test"):
        console.print("[bold]Text encoder, held-out Home Depot queries[/] (nDCG@10, whole catalogue):")
        for name, label in (("packaged_minilm", "packaged MiniLM"), ("tuned", "fine-tuned")):
            console.print(f"  {label:<16} dense {_fmt(te['test'][name]['dense']['nDCG@10'])}, "
                          f"fused with BM25 {_fmt(te['test'][name]['hybrid']['nDCG@10'])}", highlight=False)
        console.print(f"  BM25 {_fmt(te['test']['bm25']['nDCG@10'])}", highlight=False)
    for part in (emb, rr, te):
        gate, reg = part.get("gate") or {}, part.get("registered") or {}
        if reg.get("version") is not None:
            verdict = "promoted to champion" if gate.get("promoted") else f"refused: {gate.get('reasons')}"
            console.print(f"  {reg['name']} v{reg['version']} (challenger): {verdict}; "
                          f"champion is v{gate.get('champion_after')}", highlight=False)
    console.print(f"summary: {path}")


@app.command("build-index")
@fail_on_errors
def build_index(
    airflow: AirflowOption = True,
    catalog: Annotated[str | None, typer.Option(help="Catalogue to index (default: retrieval.catalog).")] = None,
) -> None:
    """Embed the catalogue with the champion embedder, build the category-sharded FAISS index (recall
    gate against exact search) and the BM25 index, publish atomically and tell serving to reload.

    The summary goes to SKULENS_HOME/reports/build_index/latest.json.
    """
    settings = settings_from()

    def local(run_id: str) -> None:
        from skulens.pipelines.build_index import run_all

        run_all(settings, run_id, catalog)

    summary, latest = _run(settings, "build_index", {"catalog": catalog}, airflow, local,
                           "running build_index (champion embedder, FAISS, BM25) ...")
    _print_stages("build_index", summary, BUILD_INDEX_DETAILS)
    console.print(f"summary: {latest}")
    if summary["status"] != "success":
        raise typer.Exit(code=1)


@app.command("train-ranker")
@fail_on_errors
def train_ranker_command(
    catalog: Annotated[str | None, typer.Option("--catalog", help="Catalogue (default: retrieval.catalog).")] = None,
    incremental: Annotated[bool, typer.Option("--incremental", help="Continue the champion's trees on the "
                                              "latest day instead of training from scratch.")] = False,
) -> None:
    """Learn the ranker from the logged searches and clicks (the events table), evaluate it on the
    held-out latest day (IPS) and held-out real judged queries, register it and run its gate (what
    the train_ranker DAG does). The summary goes to SKULENS_HOME/reports/train_ranker/latest.json."""
    from datetime import UTC, datetime

    from skulens.pipelines.train_ranker import train_ranker

    summary = train_ranker(settings_from(), datetime.now(UTC).strftime("cli-%Y%m%dT%H%M%S"), catalog,
                           incremental=incremental)
    gate = summary["gate"]
    console.print_json(json.dumps({k: summary[k] for k in ("registered", "metrics", "propensities")}, default=str))
    verdict = "promoted to champion" if gate["promoted"] else "not promoted: " + "; ".join(gate["reasons"])
    console.print(f"{gate['name']} version {summary['registered']}: {verdict}", soft_wrap=True, highlight=False)


@app.command("deploy-canary")
@fail_on_errors
def deploy_canary_command(
    index_version: Annotated[str | None, typer.Option("--index-version", help="The challenger index version.")] = None,
    reranker_version: Annotated[int | None, typer.Option("--reranker-version", help="The challenger reranker "
                                                         "version.", min=1)] = None,
    ranker_version: Annotated[int | None, typer.Option("--ranker-version", help="The challenger ranker version.",
                                                       min=1)] = None,
    hold_s: Annotated[float | None, typer.Option("--hold-s", help="Seconds at each step (default "
                                                 "serving.canary.hold_s).", min=0.1)] = None,
) -> None:
    """Roll a challenger out to 5% -> 25% -> 50% -> 100% of shoppers in every serving worker (through
    the shared routing), gated at each step against control on errors, p95 latency, fallbacks, zero
    results and CTR; a failing gate rolls back by itself (traffic, index CURRENT, champion alias).
    What the deploy_canary DAG runs; the record goes to SKULENS_HOME/reports/canary/."""
    from skulens.control.routing import VariantSpec
    from skulens.pipelines.canary import deploy_canary

    if index_version is None and reranker_version is None and ranker_version is None:
        raise typer.BadParameter("name the challenger: --index-version, --reranker-version or --ranker-version")
    settings = settings_from()
    if hold_s is not None:
        settings = settings.model_copy(update={"serving": settings.serving.model_copy(
            update={"canary": settings.serving.canary.model_copy(update={"hold_s": hold_s})})})
    record = deploy_canary(settings, VariantSpec(index_version, reranker_version, ranker_version),
                           progress=lambda line: console.print(line, soft_wrap=True, highlight=False))
    console.print(f"rollout {record['id']}: {record['outcome']}; canary served {record['canary_share_served']:.1%} "
                  f"of {record['total_requests']} requests", highlight=False)
    if record["outcome"] != "promoted":
        raise typer.Exit(code=1)


@app.command("monitor-drift")
@fail_on_errors
def monitor_drift_command() -> None:
    """Compare the current window of searches, outcomes, query embeddings and the catalogue with the
    reference window (Evidently reports under SKULENS_HOME/reports/drift/); what the hourly
    monitor_drift DAG runs. Exit code 3 when drift asks for retraining."""
    from datetime import UTC, datetime

    from skulens.pipelines.monitor_drift import monitor_drift

    decision = monitor_drift(settings_from(), datetime.now(UTC).strftime("cli-%Y%m%dT%H%M%S"))
    for check in decision["checks"]:
        state = f"skipped ({check['skipped']})" if check["skipped"] else ("DRIFT" if check["drifted"] else "stable")
        console.print(f"  {check['name']}: {state}", highlight=False, soft_wrap=True)
    console.print("drift: retraining asked for: " + "; ".join(decision["reasons"]) if decision["triggered"]
                  else "no drift", highlight=False, soft_wrap=True)
    if decision["triggered"]:
        raise typer.Exit(code=3)


@app.command("trigger")
@fail_on_errors
def trigger_command(
    dag_id: Annotated[str, typer.Argument(help="The DAG to run, e.g. train_and_export.")],
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="A DAG param as key=value (JSON values: 3, null, true); repeatable.")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the run until it ends.")] = True,
    unpause: Annotated[bool, typer.Option(
        help="Unpause the DAG first (a paused DAG's manual run waits in the queue).")] = True,
    timeout_s: Annotated[float, typer.Option(help="How long to follow the run.")] = 4 * 3600,
) -> None:
    """Trigger a DAG through Airflow's REST API (``airflow.api_url``, e.g. the one `skulens airflow
    up` started) with params, then follow the run task by task. Exit code 1 if the run fails."""
    from skulens.orchestration.airflow import client_for, parse_params

    settings = settings_from()
    conf = parse_params(param or [])
    client = client_for(settings)
    dag = client.wait_for_dag(dag_id, timeout_s=60)
    if unpause and dag["is_paused"]:
        client.set_paused(dag_id, False)
    run_id = client.trigger(dag_id, conf)
    console.print(f"triggered {dag_id} run [bold]{run_id}[/] with {json.dumps(conf)}", highlight=False)
    console.print(f"  {settings.airflow.api_url}/dags/{dag_id}/runs/{run_id}", highlight=False)
    if not wait:
        return

    def show(tasks: dict) -> None:
        line = ", ".join(f"{task} {state or 'none'}" for task, state in tasks.items())
        console.print(f"  {time.strftime('%H:%M:%S')} {line}", highlight=False, soft_wrap=True)

    state = client.follow(dag_id, run_id, timeout_s=timeout_s, on_change=show)
    colour = "green" if state == "success" else "red"
    console.print(f"{dag_id} run {run_id}: [{colour}]{state}[/]")
    if state != "success":
        raise typer.Exit(code=1)
