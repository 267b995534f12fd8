"""``skulens serve``: the search service (BentoML) on the published artefacts."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated

import typer

from skulens.cli.common import console, fail_on_errors, settings_from


@fail_on_errors
def serve_command(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
) -> None:
    """Start the BentoML search service (POST /search, /healthz, /readyz, /metrics)."""
    settings = settings_from()
    root = settings.project_root
    if not (root / "serving" / "service.py").is_file():
        raise FileNotFoundError(f"{root / 'serving' / 'service.py'} not found: run skulens serve from a checkout")
    console.print(f"skulens search service on http://{host}:{port} (index and models from {settings.home})")
    env = {**os.environ, "SKULENS_HOME": str(settings.home), "BENTOML_DO_NOT_TRACK": "True"}
    raise typer.Exit(subprocess.call([sys.executable, "-m", "bentoml", "serve", "serving.service:SearchService",
                                      "--host", host, "--port", str(port), "--working-dir", str(root)], cwd=root,
                                     env=env))
