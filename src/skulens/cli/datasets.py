"""``skulens datasets``: build, import, simulate and inspect the canonical tables."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from skulens.cli.common import console, fail_on_errors, settings_from

app = typer.Typer(help="Canonical tables: build the bundled data, import your own, simulate clicks.",
                  no_args_is_help=True)


@app.command("build")
@fail_on_errors
def build(
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Build only this bundled dataset (fashion, homedepot); repeatable.")] = None,
    shared_root: Annotated[Path | None, typer.Option(
        "--shared-root", help="Folder holding fashion/ and homedepot/ (default from config: "
        "../shared/datasets).")] = None,
) -> None:
    """Turn the bundled real datasets into canonical Parquet tables under SKULENS_HOME/tables.

    fashion: styles.csv + images/ -> products (42,874 expected, 8,011 with photos).
    homedepot: judgments.csv -> judgments (59,167 over 9,423 queries) and products.
    Defects (missing colour, title or photo) are kept and reported by rule; bad rows are rejected.
    """
    import os

    from skulens.data.loaders import build_bundled

    if shared_root:
        os.environ["SKULENS__DATASETS__SHARED_ROOT"] = str(shared_root.resolve())
    settings = settings_from()
    reports = []
    for name in only or ["fashion", "homedepot"]:
        with console.status(f"building {name} ..."):
            reports.extend(build_bundled(settings, [name]))
    for report in reports:
        _print_report(report.to_dict())


@app.command("import")
@fail_on_errors
def import_(
    mapping: Annotated[Path, typer.Argument(help="Mapping YAML (see configs/mappings/example.yaml).")],
    catalog: Annotated[str | None, typer.Option(help="Catalogue name (overrides the mapping).")] = None,
    source: Annotated[Path | None, typer.Option(help="Source file (overrides the mapping).")] = None,
    images_dir: Annotated[Path | None, typer.Option(
        "--images-dir", help="Photo folder (overrides the mapping).")] = None,
) -> None:
    """Import your own catalogue (CSV, Parquet or JSONL + a photo folder) through a column mapping.

    Every record is validated; rejected records are listed with their record number, field and
    rule (see `skulens datasets issues`). Too many rejects and nothing is published.
    """
    from skulens.data.loaders import import_catalog
    from skulens.data.mapping import load_mapping

    spec = load_mapping(
        mapping, catalog=catalog,
        source=str(source.resolve()) if source else None,
        images_dir=str(images_dir.resolve()) if images_dir else None,
    )
    report = import_catalog(settings_from(), spec)
    _print_report(report.to_dict())


@app.command("simulate-events")
@fail_on_errors
def simulate(
    catalog: Annotated[str, typer.Option(help="Catalogue whose judgments drive the simulation.")]
    = "homedepot",
    users: Annotated[int, typer.Option(min=1, help="Number of simulated users.")] = 2000,
    days: Annotated[int, typer.Option(min=1, help="Days the sessions spread over.")] = 14,
    start: Annotated[str, typer.Option(help="First day (YYYY-MM-DD).")] = "2026-11-01",
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same events.")] = 7,
    position_bias: Annotated[float, typer.Option(
        help="eta in P(examine | position p) = (1/p)^eta.")] = 1.0,
    experiment: Annotated[str | None, typer.Option(
        help="A/B experiment name; users are split between --variant values.")] = None,
    variant: Annotated[list[str] | None, typer.Option(
        help="Variant as name=ranker_noise (repeatable), e.g. control=0.6 treatment=0.3.")] = None,
) -> None:
    """Generate SIMULATED search events (impressions, clicks, carts, purchases) from judgments.

    The events are simulated, not real: clicks follow a position-based model with graded
    relevance. Output: SKULENS_HOME/events/<catalog>/ (date partitions, manifest says simulated).
    """
    from skulens.data.catalog import read_table
    from skulens.data.simulate import (
        SIMULATED_NOTE,
        SimulationConfig,
        simulate_events,
        write_events,
    )

    variants: dict[str, float] = {}
    for item in variant or []:
        name, _, noise = item.partition("=")
        try:
            variants[name.strip()] = float(noise)
        except ValueError as exc:
            raise ValueError(f"--variant {item!r}: expected name=ranker_noise, e.g. treatment=0.3") \
                from exc
    if experiment and not variants:
        variants = {"control": 0.6, "treatment": 0.3}
    settings = settings_from()
    config = SimulationConfig(seed=seed, users=users, days=days, start=date.fromisoformat(start),
                              position_bias=position_bias, experiment=experiment, variants=variants)
    judgments = read_table(settings, catalog, "judgments")
    events = simulate_events(judgments, config)
    path = write_events(events, settings.events_dir / catalog, config,
                        source=f"tables/{catalog}/judgments", keep=settings.datasets.keep_versions)
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    console.print(f"[yellow]{SIMULATED_NOTE}[/]")
    console.print(f"wrote {manifest['events']:,} events ({manifest['users']:,} users, "
                  f"{manifest['sessions']:,} sessions) to {path}")
    console.print("by type: " + ", ".join(f"{k} {v:,}" for k, v in manifest["by_type"].items()))


@app.command("summary")
@fail_on_errors
def summary(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Summarise every published catalogue (counts, rejects and defects by rule) and event set."""
    from skulens.data.catalog import list_catalogs, read_report
    from skulens.storage import VersionedDir

    settings = settings_from()
    catalogs = {name: read_report(settings, name) for name in list_catalogs(settings)}
    events: dict[str, Any] = {}
    if settings.events_dir.is_dir():
        for folder in sorted(settings.events_dir.iterdir()):
            current = VersionedDir(folder).current()
            if current and (current / "manifest.json").is_file():
                events[folder.name] = json.loads((current / "manifest.json").read_text())
    if as_json:
        typer.echo(json.dumps({"home": str(settings.home), "catalogs": catalogs, "events": events},
                              indent=2))
        return
    console.print(f"SKULENS_HOME = {settings.home}")
    if not catalogs:
        console.print("no catalogues yet: run `skulens datasets build`")
    for report in catalogs.values():
        _print_report(report)
    for name, manifest in events.items():
        kind = "SIMULATED" if manifest.get("simulated") else "recorded"
        console.print(f"[bold]events/{name}[/] ({kind}): {manifest['events']:,} events, "
                      f"{manifest['users']:,} users, {manifest['sessions']:,} sessions; "
                      + ", ".join(f"{k} {v:,}" for k, v in manifest["by_type"].items()))


@app.command("issues")
@fail_on_errors
def issues(
    catalog: Annotated[str, typer.Argument(help="Catalogue name.")],
    kind: Annotated[str, typer.Option(help="rejects (records left out) or defects (kept, flagged).")]
    = "rejects",
    rule: Annotated[str | None, typer.Option(help="Only this rule, e.g. required or image_missing.")]
    = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows to show.")] = 20,
) -> None:
    """List the rejected or flagged records of a catalogue's current version, with their reasons."""
    import pyarrow.compute as pc

    from skulens.data.catalog import read_table

    if kind not in ("rejects", "defects"):
        raise ValueError("--kind must be rejects or defects")
    table = read_table(settings_from(), catalog, kind)
    if rule:
        table = table.filter(pc.equal(table.column("rule"), rule))
    console.print(f"[bold]{catalog}[/]: {table.num_rows:,} {kind}" + (f" (rule {rule})" if rule else "")
                  + ("; row_number is the file line for CSV/JSONL" if table.num_rows else ""))
    for row in table.slice(0, limit).to_pylist():
        key = f" [{row['record_key']}]" if row["record_key"] else ""
        value = f" value={row['value']!r}" if row["value"] else ""
        console.print(f"{row['table']} row {row['row_number']}{key} {row['field']}:{row['rule']}"
                      f"{value}: {row['message']}", soft_wrap=True, markup=False, highlight=False)
    if table.num_rows > limit:
        console.print(f"... {table.num_rows - limit:,} more (use --limit)")


def _print_report(report: dict[str, Any]) -> None:
    console.print(f"\n[bold]catalogue {report['catalog']}[/]  version {report['version']}  "
                  f"({', '.join(report['sources'])})", soft_wrap=True)
    counts = Table(box=None, pad_edge=False)
    for column in ("table", "rows in", "kept", "rejected"):
        counts.add_column(column, justify="left" if column == "table" else "right")
    counts.add_column("statistics", overflow="fold")
    rules = Table(box=None, pad_edge=False)
    for column in ("table", "kind", "field:rule"):
        rules.add_column(column)
    rules.add_column("records", justify="right")
    for name, t in report["tables"].items():
        counts.add_row(name, f"{t['rows_in']:,}", f"{t['rows_out']:,}", f"{t['rejected']:,}",
                       ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                 for k, v in t["stats"].items()))
        for kind, key in (("rejected", "rejects_by_rule"), ("defect", "defects_by_rule")):
            for rule, n in t[key].items():
                rules.add_row(name, kind, rule, f"{n:,}")
    console.print(counts)
    if rules.row_count:
        console.print(rules)
    else:
        console.print("no rejects, no defects")
