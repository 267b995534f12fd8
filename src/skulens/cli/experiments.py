"""``skulens experiments``: the A/B experiments the service runs, and their analysis."""

from __future__ import annotations

from typing import Annotated

import typer

from skulens.cli.common import console, fail_on_errors, settings_from

app = typer.Typer(help="A/B experiments: list them, report an experiment's arms.", no_args_is_help=True)


@app.command("list")
@fail_on_errors
def list_experiments() -> None:
    """The experiments in the shared routing (running or scheduled) and those declared before."""
    from skulens.control.routing import ROUTING, Routing
    from skulens.control.store import open_control

    store = open_control(settings_from())
    doc, revision = store.read(ROUTING)
    routing = Routing.from_doc(doc, revision)
    running = routing.running()
    for experiment in routing.experiments:
        state = "running" if running and running.name == experiment.name else "declared"
        console.print(f"{experiment.name}: {state}, arms {experiment.shares}, salt {experiment.salt!r}, "
                      f"{experiment.start or 'open'} .. {experiment.stop or 'open'}", soft_wrap=True, highlight=False)
    past = {e["name"] for e in store.records("experiments")} - {e.name for e in routing.experiments}
    for name in sorted(past):
        console.print(f"{name}: stopped", highlight=False)


@app.command("report")
@fail_on_errors
def report(
    name: Annotated[str, typer.Argument(help="The experiment's name.")],
    mde: Annotated[float, typer.Option("--mde", help="Relative CTR change the sample size is for.", min=0.001)] = 0.02,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Each arm's shoppers, searches, CTR, zero-result rate, carts and purchases per shopper and p95
    latency; lifts over control with 95% intervals; the sample-ratio-mismatch check; the shoppers
    still needed. Read from the stream job's events table (run `skulens stream run --once` first)."""
    from skulens.control.routing import ROUTING, Experiment, Routing
    from skulens.control.store import open_control
    from skulens.evaluation.experiments import (
        analyse,
        dumps,
        format_report,
        interleaving,
        per_user_from_events,
        read_exposures,
        read_interleaved_clicks,
    )
    from skulens.storage.layout import stream_paths

    settings = settings_from()
    store = open_control(settings)
    doc, revision = store.read(ROUTING)
    declared = {e.name: e for e in Routing.from_doc(doc, revision).experiments}
    for record in store.records("experiments"):
        declared.setdefault(record["name"], Experiment.parse(record))
    events = read_exposures(stream_paths(settings).events, name)
    if events.empty:
        raise typer.BadParameter(f"no searches of experiment {name!r} in the events table yet "
                                 "(is it running, and has the stream job run?)", param_hint="NAME")
    per_user, latencies = per_user_from_events(events)
    shares = declared[name].shares if name in declared else \
        {arm: 1 / per_user["arm"].nunique() for arm in per_user["arm"].unique()}
    result = analyse(per_user, shares, latencies, mde=mde)
    if name in declared and declared[name].method == "interleave":
        result["interleaving"] = interleaving(read_interleaved_clicks(stream_paths(settings).events, name))
    if as_json:
        print(dumps(result))  # plain JSON on stdout, for scripts (no console markup or wrapping)
    else:
        console.print(format_report(name, result), soft_wrap=True, highlight=False, markup=False)
