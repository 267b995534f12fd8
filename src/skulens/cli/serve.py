"""``skulens serve``: the search service (BentoML) on the published artefacts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from skulens.cli.common import console, fail_on_errors, settings_from


@fail_on_errors
def serve_command(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    workers: Annotated[int | None, typer.Option(
        min=1, max=64, help="Worker processes (default: serving.workers); each memory-maps the index.")] = None,
    examples: Annotated[bool, typer.Option(
        "--examples", help="Once ready, run example searches (text, photo, similar, session) and print them; "
                           "then keep serving when run from a terminal, else stop.")] = False,
) -> None:
    """Start the search service: POST /search, /recommend/similar, /recommend/session, the web page
    at /, /healthz, /readyz, /metrics and the admin endpoints (API key from $SKULENS_ADMIN_KEY)."""
    settings = settings_from()
    root = settings.project_root
    if not (root / "serving" / "service.py").is_file():
        raise FileNotFoundError(f"{root / 'serving' / 'service.py'} not found: run skulens serve from a checkout")
    url = f"http://{host}:{port}"
    console.print(f"skulens search service on {url} (index and models from {settings.home})")
    env = {**os.environ, "SKULENS_HOME": str(settings.home), "BENTOML_DO_NOT_TRACK": "True"}
    if workers is not None:
        env["SKULENS__SERVING__WORKERS"] = str(workers)  # read by serving/service.py's decorator
    key_env = settings.serving.admin_key_env
    if examples and not env.get(key_env):
        import secrets

        env[key_env] = secrets.token_urlsafe(16)  # this run's own admin key, to watch the LLM tiers load
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:SearchService", "--host", host,
               "--port", str(port), "--working-dir", str(root)]
    if not examples:
        raise typer.Exit(subprocess.call(command, cwd=root, env=env))
    server = subprocess.Popen(command, cwd=root, env=env, start_new_session=True)
    try:
        from skulens.serving.examples import run_examples, wait_llm, wait_ready

        seconds = wait_ready(url, alive=lambda: server.poll() is None)
        console.print(f"ready in {seconds:.0f} s; waiting for the local LLM tier to load")
        if not wait_llm(url, env[key_env]):
            console.print("the LLM tiers are still loading; running the examples anyway")
        run_examples(url, _a_photo(settings), _show)
        console.print(f"\n[bold]web page:[/] {url}/   (search box, photo upload, filters, similar products)")
        if sys.stdin.isatty():
            console.print("serving; Ctrl-C to stop")
            server.wait()
        else:
            console.print("not a terminal: stopping the service. Start it again with `skulens serve` "
                          f"(or `make serve`) and open {url}/")
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


def _a_photo(settings: Any) -> Path | None:
    import pyarrow.parquet as pq

    from skulens.storage.layout import index_store

    current = index_store(settings, settings.retrieval.catalog).current()
    if current is None or not (current / "products.parquet").is_file():
        return None
    uris = pq.read_table(current / "products.parquet", columns=["image_uri"]).column("image_uri").to_pylist()
    return next((Path(u) for u in uris if u and Path(u).is_file()), None)


def _show(title: str, body: dict[str, Any]) -> None:
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in ("product", "title", "scores"):
        table.add_column(column, overflow="fold")
    for item in body.get("items", []):
        scores = item.get("scores") or {"score": item.get("score")}
        table.add_row(item["product_id"], item.get("title") or "",
                      " ".join(f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, (int, float))))
    console.print(table)
    notes = []
    if body.get("query"):
        notes.append(f"query: {body['query']!r}")
    if body.get("rewrites"):
        notes.append("rewrites: " + ", ".join(str(r.get("to", r.get("kind"))) for r in body["rewrites"]))
    if body.get("stages"):
        notes.append(" ".join(f"{s['name']} {s['ms']:.0f} ms" for s in body["stages"]))
    if body.get("fallbacks"):
        notes.append("fallbacks: " + ", ".join(body["fallbacks"]))
    if body.get("source"):
        notes.append(f"source: {body['source']}")
    if notes:
        console.print("  " + " | ".join(notes))
