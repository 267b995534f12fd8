"""Which variant serves whom: the routing document every worker follows.

The routing lives in the shared control store (:mod:`skulens.control.store`) under ``routing``:

* ``variants``: name -> the versions it serves (:class:`VariantSpec`; null fields: the published
  index, the champion reranker and ranker). ``control`` is always there; with a pinned
  ``index_version`` it no longer follows the published index (a canary pins the champion);
* ``traffic`` and ``salt``: the split outside experiments;
* ``experiments``: declared experiments (name, arms with versions and shares, salt, start/stop);
  the first whose window holds *now* decides the split while it runs;
* ``stats_window``: the counters key under which workers add their per-variant statistics (a
  canary step), or null.

Bucketing is a SHA-256 of ``salt`` and the user id (the session id for anonymous shoppers), so a
shopper keeps their arm for the whole experiment, and two experiments with different salts bucket
independently. Arms take buckets in name order, so when a canary's share grows the shoppers who
already had it keep it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from skulens.control.store import Conflict

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
VERSION = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
ROUTING = "routing"  # the document's name in the control store
CANARY_PREFIX = "canary-"  # experiments named so belong to deploy_canary
WORKERS = "workers"  # each live worker's loaded variants and failed builds (ServingState.report_worker)
DRIFT = "drift"  # monitor_drift's latest decision per check (the service exposes it as metrics)


class RoutingError(ValueError):
    """A routing change that is not valid; the message says which field and why."""


@dataclass(frozen=True)
class VariantSpec:
    """The versions one variant serves; None: the published index / the registered champion."""

    index_version: str | None = None
    reranker_version: int | None = None
    ranker_version: int | None = None

    @classmethod
    def parse(cls, raw: Any, where: str = "variant") -> VariantSpec:
        """A spec from a JSON object; a bad field is a :class:`RoutingError` naming it."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise RoutingError(f"{where} must be an object of versions")
        unknown = sorted(set(raw) - {"index_version", "reranker_version", "ranker_version", "share"})
        if unknown:
            raise RoutingError(f"{where}: unknown field(s) {', '.join(unknown)}")
        index = raw.get("index_version")
        if index is not None and (not isinstance(index, str) or not VERSION.match(index)):
            raise RoutingError(f"{where}.index_version must be a version name (letters, digits, '.', '_', ':', '-')")
        numbers = {}
        for name in ("reranker_version", "ranker_version"):
            value = raw.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise RoutingError(f"{where}.{name} must be a positive integer")
            numbers[name] = value
        return cls(index, **numbers)

    def to_dict(self) -> dict[str, Any]:
        return {"index_version": self.index_version, "reranker_version": self.reranker_version,
                "ranker_version": self.ranker_version}


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: dict[str, VariantSpec]
    shares: dict[str, float]
    salt: str
    start: datetime | None = None
    stop: datetime | None = None
    # "ab": each shopper sees one arm's page; "interleave": a shopper in the challenger's share sees
    # one page interleaved from both arms by team draft (each result credited to the arm that
    # placed it), the faster way to learn which arm shoppers prefer.
    method: str = "ab"

    def running(self, now: datetime) -> bool:
        return (self.start is None or self.start <= now) and (self.stop is None or now < self.stop)

    @classmethod
    def parse(cls, raw: Any) -> Experiment:
        """An experiment from its JSON (admin API, configuration, the store)."""
        if not isinstance(raw, dict):
            raise RoutingError("an experiment must be an object with name and arms")
        unknown = sorted(set(raw) - {"name", "arms", "salt", "start", "stop", "method"})
        if unknown:
            raise RoutingError(f"experiment: unknown field(s) {', '.join(unknown)}")
        name = raw.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise RoutingError("experiment.name must be 1-64 letters, digits, '-' or '_'")
        arms_raw = raw.get("arms")
        if not isinstance(arms_raw, dict) or "control" not in arms_raw or len(arms_raw) < 2 or len(arms_raw) > 8:
            raise RoutingError("experiment.arms must map 2-8 arm names, one of them 'control', "
                               "to their versions and share")
        arms, shares = {}, {}
        for arm, spec in arms_raw.items():
            if not isinstance(arm, str) or not NAME.match(arm):
                raise RoutingError(f"experiment.arms: arm name {str(arm)[:70]!r} must be 1-64 letters, "
                                   "digits, '-', '_'")
            arms[arm] = VariantSpec.parse(spec, f"experiment.arms.{arm}")
            share = spec.get("share") if isinstance(spec, dict) else None
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
                raise RoutingError(f"experiment.arms.{arm}.share must be a number from 0 to 1")
            shares[arm] = float(share)
        if abs(sum(shares.values()) - 1.0) > 1e-6:
            raise RoutingError(f"experiment.arms: shares add up to {sum(shares.values()):g}, not 1")
        salt = raw.get("salt") if raw.get("salt") is not None else name
        if not isinstance(salt, str) or not 1 <= len(salt) <= 128:
            raise RoutingError("experiment.salt must be a string of 1-128 characters")
        start, stop = (_time(raw.get(k), f"experiment.{k}") for k in ("start", "stop"))
        if start and stop and stop <= start:
            raise RoutingError("experiment.stop must be after experiment.start")
        method = raw.get("method") or "ab"
        if method not in ("ab", "interleave"):
            raise RoutingError("experiment.method must be 'ab' or 'interleave'")
        if method == "interleave" and len(arms) != 2:
            raise RoutingError("an interleaved experiment has exactly two arms: control and one challenger")
        return cls(name, arms, shares, salt, start, stop, method)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "salt": self.salt,
                "arms": {arm: {**spec.to_dict(), "share": self.shares[arm]} for arm, spec in self.arms.items()},
                "start": self.start.isoformat() if self.start else None,
                "stop": self.stop.isoformat() if self.stop else None, "method": self.method}


def _time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RoutingError(f"{where} must be an ISO 8601 time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise RoutingError(f"{where}: {value[:40]!r} is not an ISO 8601 time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Plan:
    """What a worker serves now: the variants to hold loaded, the split, its salt and experiment."""

    specs: dict[str, VariantSpec]
    shares: dict[str, float]
    salt: str
    experiment: str | None = None
    method: str = "ab"


@dataclass
class Routing:
    variants: dict[str, VariantSpec] = field(default_factory=lambda: {"control": VariantSpec()})
    traffic: dict[str, float] = field(default_factory=lambda: {"control": 1.0})
    salt: str = "traffic"
    experiments: list[Experiment] = field(default_factory=list)
    stats_window: str | None = None
    revision: int = 0

    @classmethod
    def from_doc(cls, doc: dict[str, Any] | None, revision: int = 0) -> Routing:
        if not doc:
            return cls(revision=revision)
        variants = {name: VariantSpec.parse(spec) for name, spec in (doc.get("variants") or {}).items()}
        variants.setdefault("control", VariantSpec())
        return cls(variants, dict(doc.get("traffic") or {"control": 1.0}), doc.get("salt") or "traffic",
                   [Experiment.parse(e) for e in doc.get("experiments") or []], doc.get("stats_window"), revision)

    def to_doc(self) -> dict[str, Any]:
        return {"variants": {n: s.to_dict() for n, s in self.variants.items()}, "traffic": self.traffic,
                "salt": self.salt, "experiments": [e.to_dict() for e in self.experiments],
                "stats_window": self.stats_window}

    def running(self, now: datetime | None = None) -> Experiment | None:
        """The experiment in force: a canary rollout's first (an A/B experiment pauses while a
        rollout runs), else the first declared whose window holds ``now``."""
        now = now or datetime.now(UTC)
        live = [e for e in self.experiments if e.running(now)]
        return next((e for e in live if e.name.startswith(CANARY_PREFIX)), live[0] if live else None)

    def plan(self, now: datetime | None = None) -> Plan:
        """The variants and split in force at ``now`` (a running experiment's arms, else ``traffic``).
        An experiment arm with no versions of its own serves what control serves."""
        experiment = self.running(now)
        if experiment is None:
            return Plan(dict(self.variants), dict(self.traffic), self.salt)
        control = self.variants["control"]
        specs = {arm: spec if spec != VariantSpec() else control for arm, spec in experiment.arms.items()}
        if experiment.arms["control"] == VariantSpec():
            specs["control"] = control
        return Plan(specs, dict(experiment.shares), experiment.salt, experiment.name, experiment.method)

    def check_traffic(self, split: Any) -> dict[str, float]:
        """``split`` as shares over declared variants adding up to 1; else a :class:`RoutingError`."""
        if not isinstance(split, dict) or not split:
            raise RoutingError("traffic must map variant names to shares, e.g. {\"control\": 0.9, \"b\": 0.1}")
        unknown = sorted(set(split) - set(self.variants))
        if unknown:
            raise RoutingError(f"variant(s) {', '.join(map(str, unknown))} not loaded; load with /admin/reload first")
        shares = {}
        for name, share in split.items():
            if isinstance(share, bool) or not isinstance(share, (int, float)) or share < 0:
                raise RoutingError(f"share of {name!r} must be a non-negative number, got {share!r}")
            shares[name] = float(share)
        if abs(sum(shares.values()) - 1.0) > 1e-6:
            raise RoutingError(f"shares add up to {sum(shares.values()):g}, not 1")
        return shares


def change_routing(store: Any, change: Callable[[Routing], None], attempts: int = 20) -> Routing | None:
    """Apply ``change`` to the routing in ``store`` by compare-and-set, read again and retried when
    another writer came first; the routing written, or None when every attempt lost."""
    for _ in range(attempts):
        doc, revision = store.read(ROUTING)
        routing = Routing.from_doc(doc, revision)
        change(routing)
        try:
            routing.revision = store.write(ROUTING, routing.to_doc(), expect=revision)
            return routing
        except Conflict:
            continue
    return None


def bucket(key: str, salt: str) -> float:
    """A number in [0, 1) fixed by ``salt`` and ``key``: the same user always lands in the same place."""
    digest = hashlib.sha256(f"{salt}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(key: str | None, shares: dict[str, float], salt: str) -> str:
    """The arm of ``key`` under ``shares``: arms take buckets in name order. A request with neither
    user nor session id cannot be bucketed: it gets control (the champion), or the only arm."""
    live = {name: share for name, share in shares.items() if share > 0}
    if not live:
        return "control"
    if key is None or len(live) == 1:
        return "control" if "control" in live and key is None else max(sorted(live), key=lambda n: live[n])
    point, total = bucket(key, salt), 0.0
    for name in sorted(live):
        total += live[name]
        if point < total:
            return name
    return sorted(live)[-1]


def team_draft(pages: dict[str, list[dict[str, Any]]], k: int, coin: Any) -> list[dict[str, Any]]:
    """Team-draft interleaving of two arms' ranked ``pages`` (items with ``product_id``) into at
    most ``k`` results: the team with fewer picks (``coin()`` on a tie) adds its best result not yet
    shown; each item gets ``team``, the arm that placed it (Radlinski, Kurup and Joachims, 2008)."""
    (a, _), (b, _) = sorted(pages.items())
    picked: list[dict[str, Any]] = []
    shown: set[str] = set()
    counts = {a: 0, b: 0}

    def best_unshown(team: str) -> dict[str, Any] | None:
        return next((item for item in pages[team] if item["product_id"] not in shown), None)

    while len(picked) < k:
        team = a if counts[a] < counts[b] or (counts[a] == counts[b] and coin()) else b
        item = best_unshown(team)
        if item is None:  # this arm has nothing left: the other fills the page
            team = b if team == a else a
            item = best_unshown(team)
            if item is None:
                break
        picked.append({**item, "team": team})
        shown.add(item["product_id"])
        counts[team] += 1
    return picked


def team_mask(items: list[dict[str, Any]], challenger: str) -> str:
    """The positions the challenger placed, as a hex bit mask (bit i: position i + 1); carried in the
    search id so that a click says which arm earned it, whichever worker receives it."""
    return format(sum(1 << i for i, item in enumerate(items) if item.get("team") == challenger), "x")


def team_of(search_id: str, position: int) -> str | None:
    """``challenger``/``control`` for a click at ``position`` of an interleaved search id, else None."""
    parts = search_id.split(".")
    if len(parts) < 3 or parts[-2] != "il" or not 1 <= position <= 64:
        return None
    try:
        mask = int(parts[-1], 16)
    except ValueError:
        return None
    return "challenger" if mask >> (position - 1) & 1 else "control"
