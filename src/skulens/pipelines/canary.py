"""``deploy_canary``: release a challenger (index version, reranker or ranker version) to a growing
share of shoppers in every serving worker, and take it back by itself when a gate fails.

How it runs, all through the shared control store that every worker follows
(:mod:`skulens.control`):

1. **pin the champion**: control is pinned to the versions it serves now (the index before the
   challenger's, the champion before the challenger's promotion), so that neither the index
   watcher nor an alias change moves control mid-rollout;
2. **the offline gate**: a reranker or ranker challenger must pass its kind's promotion rules
   against the champion on the held-out metrics its training run logged;
3. **steps** (``serving.canary.steps``, 5% → 25% → 50% → 100%): an experiment ``canary-<id>`` with
   arms control and canary (shoppers bucketed by user or session; a canary shopper stays one as the
   share grows) and a statistics window per step; every ``poll_s`` the gates compare canary with
   control over that window once the canary has ``min_requests``: error rate, p95 latency, fallback
   rate, zero-result rate, online CTR (once control has ``min_clicks``). A failing gate rolls back at
   once; a step that never gets enough traffic fails too (a canary nobody could load);
4. **promote** (index ``CURRENT`` and the ``champion`` alias to the challenger, control unpinned)
   or **roll back** (traffic to control, ``CURRENT`` and the alias back where they were).

Every rollout is appended to the store's ``rollouts`` log and written to
``SKULENS_HOME/reports/canary/<id>.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from skulens.control.routing import CANARY_PREFIX, Experiment, Routing, VariantSpec, change_routing
from skulens.control.stats import Summary, read_window
from skulens.control.store import ControlStore, open_control


@dataclass
class Rollout:
    id: str
    challenger: dict[str, Any]
    champion: dict[str, Any]
    restore: dict[str, Any]
    started_at: float = field(default_factory=time.time)
    steps: list[dict[str, Any]] = field(default_factory=list)
    offline: dict[str, Any] | None = None
    outcome: str = "running"  # promoted | rolled_back
    reason: str | None = None
    first_canary_request_at: float | None = None
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        canary = sum(s["canary"]["requests"] for s in self.steps if s.get("canary"))
        total = canary + sum(s["control"]["requests"] for s in self.steps if s.get("control"))
        return {**self.__dict__, "canary_requests": canary, "total_requests": total,
                "canary_share_served": round(canary / total, 4) if total else 0.0,
                "first_request_to_decision_s": None if self.first_canary_request_at is None or self.finished_at is None
                else round(self.finished_at - self.first_canary_request_at, 2)}


def check_gates(canary: Summary, control: Summary, rules: Any, *, final: bool = False) -> list[str]:
    """The gates a step's canary fails against control over the same window (empty: it passes).

    CTR fails when the canary's drop is both larger than ``max_ctr_drop`` and sure: control's CTR
    above the canary's by z > 2.5 at the step's end (``final``: one look a step), or by z > 4 at
    any poll in between (a gross failure stops the step early; the strict bar pays for the
    repeated looks)."""
    failed = []
    if canary.error_rate > rules.max_error_rate:
        failed.append(f"error rate {canary.error_rate:.3f} > {rules.max_error_rate}")
    if canary.p95_ms is not None:
        if canary.p95_ms > rules.max_p95_ms:
            failed.append(f"p95 {canary.p95_ms:.0f} ms > {rules.max_p95_ms:.0f} ms")
        elif control.p95_ms and canary.p95_ms > control.p95_ms * rules.max_p95_ratio \
                and canary.p95_ms - control.p95_ms > rules.p95_slack_ms:
            failed.append(f"p95 {canary.p95_ms:.0f} ms > {rules.max_p95_ratio} x control {control.p95_ms:.0f} ms")
    if canary.fallback_rate > control.fallback_rate + rules.max_fallback_increase:
        failed.append(f"fallback rate {canary.fallback_rate:.3f} vs control {control.fallback_rate:.3f}")
    if canary.zero_result_rate > control.zero_result_rate + rules.max_zero_result_increase:
        failed.append(f"zero-result rate {canary.zero_result_rate:.3f} vs control {control.zero_result_rate:.3f}")
    if control.clicks >= rules.min_clicks and control.ctr > 0 and canary.requests and control.requests:
        drop = 1 - canary.ctr / control.ctr
        z = _ctr_drop_z(canary, control)
        if drop > rules.max_ctr_drop and z > (2.5 if final else 4.0):
            failed.append(f"CTR {canary.ctr:.3f} vs control {control.ctr:.3f} ({drop:.0%} lower, z {z:.1f})")
    return failed


def _ctr_drop_z(canary: Summary, control: Summary) -> float:
    """Two-proportion z of control's CTR over the canary's, with the pooled rate under "no
    difference": the canary's own observed rate would shrink its variance exactly when few of its
    early requests were clicked, and roll back a good canary on small-sample noise."""
    pooled = (canary.clicks + control.clicks) / (canary.requests + control.requests)
    spread = (pooled * (1 - pooled) * (1 / canary.requests + 1 / control.requests)) ** 0.5
    return (control.ctr - canary.ctr) / max(spread, 1e-9)


def deploy_canary(settings: Any, challenger: VariantSpec, *, rollout_id: str | None = None,
                  store: ControlStore | None = None, poll_s: float = 1.0,
                  progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Roll ``challenger`` out step by step (see the module docstring); the rollout record."""
    rules = settings.serving.canary
    store = store or open_control(settings)
    rollout_id = rollout_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    champion, restore = _champion(settings, challenger)
    challenger = VariantSpec(challenger.index_version or champion.index_version,
                             challenger.reranker_version or champion.reranker_version,
                             challenger.ranker_version or champion.ranker_version)
    rollout = Rollout(rollout_id, challenger.to_dict(), champion.to_dict(), restore)
    name = f"{CANARY_PREFIX}{rollout_id}"
    rollout.offline = _offline_gate(settings, challenger, champion)
    if not rollout.offline["passed"]:
        why = "offline: " + "; ".join(rollout.offline["reasons"])
        return _finish(settings, store, rollout, name, "rolled_back", why, progress)
    _route(store, lambda r: r.variants.__setitem__("control", champion))
    last_control: Summary | None = None
    for number, share in enumerate(rules.steps):
        window = f"{rollout_id}:{number}"
        arms = {"control": {**champion.to_dict(), "share": round(1 - share, 6)},
                "canary": {**challenger.to_dict(), "share": share}}
        experiment = Experiment.parse({"name": name, "arms": arms, "salt": name})

        def step(routing: Routing, experiment: Experiment = experiment, window: str = window) -> None:
            routing.experiments = [e for e in routing.experiments if e.name != name] + [experiment]
            routing.stats_window = window
        _route(store, step)
        if number == 0:
            not_loaded = _await_loaded(store, challenger, rules.load_timeout_s, poll_s)
            if not_loaded:
                return _finish(settings, store, rollout, name, "rolled_back", not_loaded, progress)
            progress("the canary is loaded in every worker")
        progress(f"step {number + 1}/{len(rules.steps)}: canary at {share:.0%} (hold {rules.hold_s:g} s)")
        failed, record = _hold(store, window, share, rules, rollout, poll_s, last_control)
        rollout.steps.append(record)
        if failed:
            return _finish(settings, store, rollout, name, "rolled_back",
                           f"step {number + 1} ({share:.0%}): " + "; ".join(failed), progress)
        if record["control"]["requests"]:
            last_control = read_window(store, window, ["control"])["control"]
    return _finish(settings, store, rollout, name, "promoted", None, progress)


def _await_loaded(store: ControlStore, challenger: VariantSpec, timeout_s: float, poll_s: float) -> str | None:
    """Wait until every live worker serves the canary with the challenger's versions; a reason to
    roll back when one reports that it cannot load it, or when the time is up (None: all loaded)."""
    from skulens.control.routing import WORKERS

    wanted = challenger.to_dict()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        doc, _ = store.read(WORKERS)
        live = {key: w for key, w in (doc or {}).items() if time.time() - w.get("at", 0) < 10}
        failed = {key: w["failed"]["canary"] for key, w in live.items()
                  if {k: v for k, v in w.get("failed", {}).get("canary", {}).items() if k != "error"} == wanted}
        if failed:
            key, why = next(iter(failed.items()))
            return f"the canary failed to load in {len(failed)} of {len(live)} worker(s) ({key}: {why.get('error')})"
        if live and all(w.get("variants", {}).get("canary") == wanted for w in live.values()):
            return None
        time.sleep(poll_s)
    return f"the canary was not loaded by every worker within {timeout_s:g} s"


def _hold(store: ControlStore, window: str, share: float, rules: Any, rollout: Rollout, poll_s: float,
          last_control: Summary | None) -> tuple[list[str], dict[str, Any]]:
    """Watch one step: the gates every ``poll_s``; a failure ends it at once. A step without enough
    canary requests after three holds fails."""
    started = time.time()
    while True:
        time.sleep(poll_s)
        seen = read_window(store, window, ["control", "canary"])
        canary, control = seen["canary"], seen["control"]
        if control.requests < rules.min_requests and last_control is not None:
            control = last_control  # at 100% control sees little: compare with the last step's
        if canary.requests and rollout.first_canary_request_at is None:
            rollout.first_canary_request_at = time.time()
        record = {"share": share, "window": window, "canary": canary.to_dict(), "control": seen["control"].to_dict(),
                  "held_s": round(time.time() - started, 1)}
        if canary.requests >= rules.min_requests:
            held = time.time() - started >= rules.hold_s
            failed = check_gates(canary, control, rules, final=held)
            if failed or held:
                return failed, record
        elif time.time() - started >= 3 * rules.hold_s:
            return [f"only {canary.requests} canary requests in {3 * rules.hold_s:g} s (need {rules.min_requests}); "
                    "is the canary loaded in the workers?"], record


def _route(store: ControlStore, change: Callable[[Routing], None]) -> Routing:
    routing = change_routing(store, change, attempts=50)
    if routing is None:
        raise RuntimeError("the routing kept changing; the rollout could not write it")
    return routing


def _champion(settings: Any, challenger: VariantSpec) -> tuple[VariantSpec, dict[str, Any]]:
    """What control serves now (pinned for the rollout) and what a rollback restores: the published
    index before the challenger's, the champion aliases before the challenger's promotion."""
    from skulens.storage.layout import index_store

    store = index_store(settings, settings.retrieval.catalog)
    current = store.current_id()
    index = current
    if challenger.index_version is not None and current == challenger.index_version:
        older = [v for v in store.list_versions() if v < challenger.index_version]
        index = older[-1] if older else None
    restore: dict[str, Any] = {"index_current": index}
    versions: dict[str, int | None] = {}
    for kind, wanted in (("reranker", challenger.reranker_version), ("ranker", challenger.ranker_version)):
        versions[kind] = restore[kind] = _alias_before(settings, kind, wanted)
    return VariantSpec(index, versions["reranker"], versions["ranker"]), restore


def _alias_before(settings: Any, kind: str, challenger: int | None) -> int | None:
    """The champion of ``kind`` before ``challenger`` (its promotion records it), else today's."""
    from skulens.tracking.registry import CHAMPION, alias_version, client

    name = getattr(settings.models, kind)
    try:
        champion = alias_version(settings, name, CHAMPION)
    except Exception:  # noqa: BLE001 - no registry yet: nothing to pin or restore
        return None
    if challenger is None or champion != challenger:
        return champion
    tags = client(settings).get_model_version(name, str(challenger)).tags
    before = tags.get("champion_before")
    return int(before) if before and before.isdigit() else None


def _offline_gate(settings: Any, challenger: VariantSpec, champion: VariantSpec) -> dict[str, Any]:
    """A reranker or ranker challenger against the champion on the held-out metrics their runs
    logged (the kind's promotion rules); an index version passed its own gates when it was built."""
    from skulens.tracking.registry import decide_promotion, version_metrics

    reasons: list[str] = []
    checks: list[dict[str, Any]] = []
    for kind, new, old in (("reranker", challenger.reranker_version, champion.reranker_version),
                           ("ranker", challenger.ranker_version, champion.ranker_version)):
        if new is None or new == old:
            continue
        name = getattr(settings.models, kind)
        passed, why, rule_checks = decide_promotion(settings.models.gate.get(kind, []),
                                                    version_metrics(settings, name, new),
                                                    version_metrics(settings, name, old) if old else None)
        reasons += [f"{kind} v{new}: {r}" for r in why]
        checks += [{"kind": kind, **c} for c in rule_checks]
    return {"passed": not reasons, "reasons": reasons, "checks": checks}


def _finish(settings: Any, store: ControlStore, rollout: Rollout, name: str, outcome: str, reason: str | None,
            progress: Callable[[str], None]) -> dict[str, Any]:
    rollout.outcome, rollout.reason = outcome, reason
    if outcome == "promoted":
        _publish(settings, rollout.challenger)
    else:
        _publish(settings, {"index_version": rollout.restore.get("index_current"),
                            "reranker_version": rollout.restore.get("reranker"),
                            "ranker_version": rollout.restore.get("ranker")})

    def end(routing: Routing) -> None:
        routing.experiments = [e for e in routing.experiments if e.name != name]
        routing.stats_window = None
        routing.variants["control"] = VariantSpec()  # follow the published index and the champions again
    _route(store, end)
    rollout.finished_at = time.time()
    record = rollout.to_dict()
    store.append("rollouts", record)
    folder = settings.reports_dir / "canary"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{rollout.id}.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    progress(f"{outcome}" + (f": {reason}" if reason else ""))
    return record


def _publish(settings: Any, versions: dict[str, Any]) -> None:
    """Point the index ``CURRENT`` and the champion aliases at ``versions`` (None: leave as is)."""
    from skulens.storage.layout import index_store

    index = versions.get("index_version")
    store = index_store(settings, settings.retrieval.catalog)
    if index and store.current_id() != index:
        store.set_current(index)
    _set_aliases(settings, versions)


def _set_aliases(settings: Any, versions: dict[str, Any]) -> None:
    from skulens.tracking.registry import CHAMPION, alias_version, client

    for kind in ("reranker", "ranker"):
        version = versions.get(f"{kind}_version")
        name = getattr(settings.models, kind)
        if version is not None and alias_version(settings, name, CHAMPION) != version:
            client(settings).set_registered_model_alias(name, CHAMPION, str(version))


def challenger_from(settings: Any, params: dict[str, Any]) -> VariantSpec:
    """The challenger a DAG run names, else what triggered it: the published index and the
    registered champions (a build or a promotion moved them; control stays pinned to the previous)."""
    from skulens.storage.layout import index_store
    from skulens.tracking.registry import CHAMPION, alias_version

    index = params.get("index_version") or index_store(settings, settings.retrieval.catalog).current_id()
    found: dict[str, int | None] = {}
    for kind in ("reranker", "ranker"):
        found[kind] = params.get(f"{kind}_version")
        if found[kind] is None:
            try:
                found[kind] = alias_version(settings, getattr(settings.models, kind), CHAMPION)
            except Exception:  # noqa: BLE001 - no registry yet: none
                found[kind] = None
    return VariantSpec(index, found["reranker"], found["ranker"])
