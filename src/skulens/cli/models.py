"""``skulens models``: the named model specs and what the MLflow registry holds."""

from __future__ import annotations

import typer

from skulens.cli.common import console, fail_on_errors, settings_from

app = typer.Typer(help="Model specs and the MLflow model registry.", no_args_is_help=True)


@app.command("list")
@fail_on_errors
def list_models() -> None:
    """Print every model spec the registry of configs knows (built-in and SKULENS_MODEL_CONFIGS)."""
    from skulens.models import get_spec, list_specs

    for name in list_specs():
        spec = get_spec(name)
        source = spec.architecture or "custom open_clip config"
        console.print(f"[bold]{name}[/] ({source}; pretrained: {spec.pretrained or 'none'}"
                      f"{'; image tower: ' + spec.image_tower_weights if spec.image_tower_weights else ''})")
        console.print(f"  {spec.description}", highlight=False, soft_wrap=True)


@app.command("registry")
@fail_on_errors
def registry() -> None:
    """Registered versions of skulens-embedder and skulens-reranker, their aliases and gate tags."""
    from mlflow.exceptions import MlflowException

    from skulens.tracking.registry import client

    settings = settings_from()
    mlc = client(settings)
    for name in (settings.models.embedder, settings.models.reranker):
        try:
            model = mlc.get_registered_model(name)
        except MlflowException:
            console.print(f"[bold]{name}[/]: not registered yet")
            continue
        aliases = {v: a for a, v in (model.aliases or {}).items()}
        console.print(f"[bold]{name}[/]")
        for mv in sorted(mlc.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
            tags = ", ".join(f"{k}={v}" for k, v in sorted(mv.tags.items()))
            alias = aliases.get(mv.version, "")
            console.print(f"  v{mv.version:<4} {alias:<11} run {mv.run_id}  {tags}", highlight=False, soft_wrap=True)
