"""``skulens index``: published index versions and rollback."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from skulens.cli.common import console, fail_on_errors, settings_from

app = typer.Typer(help="Published search indexes: versions and rollback.", no_args_is_help=True)


@app.command("versions")
@fail_on_errors
def versions(catalog: Annotated[str | None, typer.Argument(help="Catalogue (default: retrieval.catalog).")] = None
             ) -> None:
    """List the kept index versions of a catalogue; the current one is marked."""
    from skulens.storage.layout import index_store

    settings = settings_from()
    catalog = catalog or settings.retrieval.catalog
    store = index_store(settings, catalog)
    current = store.current_id()
    for version in store.list_versions():
        manifest = store.local(version) / "manifest.json"
        info = json.loads(manifest.read_text()) if manifest.is_file() else {}
        mark = "*" if version == current else " "
        console.print(f"{mark} {version}  model {info.get('model_version')}  recall@10 "
                      f"{info.get('vector', {}).get('recall@10')}  published {info.get('published_at')}",
                      highlight=False)


@app.command("rollback")
@fail_on_errors
def rollback(
    catalog: Annotated[str | None, typer.Argument(help="Catalogue (default: retrieval.catalog).")] = None,
    version: Annotated[str | None, typer.Option(help="Version to make current (default: the previous one).")]
    = None,
) -> None:
    """Point the catalogue's CURRENT index back at an earlier version (atomic)."""
    from skulens.pipelines.build_index import rollback as do_rollback

    settings = settings_from()
    catalog = catalog or settings.retrieval.catalog
    console.print(f"{catalog}: current index is now {do_rollback(settings, catalog, version)}")


@app.command("compact")
@fail_on_errors
def compact(catalog: Annotated[str | None, typer.Argument(help="Catalogue (default: retrieval.catalog).")] = None
            ) -> None:
    """Fold the live upserts and deletes logged since the current version into a new version."""
    from skulens.retrieval.live import compact as do_compact

    settings = settings_from()
    summary = do_compact(settings, catalog or settings.retrieval.catalog)
    console.print(json.dumps(summary, indent=2), highlight=False)
