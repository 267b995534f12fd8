"""What a running service holds: the loaded variants (champion ``control`` and any experiment
or canary arms), the split between them, the LLM cascade, the recommender and the metrics.

Routing is not this process's to decide: it lives in the shared control store
(:mod:`skulens.control`), and every worker of every replica follows it (:meth:`ServingState.sync`,
every ``serving.shared.sync_s``): it loads the variants the routing names, drops the others and
buckets shoppers with the routing's salt. An admin change is written there and reaches every
worker; the workers add their per-variant statistics there for the canary gates.

Reloading a variant builds the new one completely before swapping it in; when the build fails the
old variant keeps serving and the failure is counted (``skulens_reloads{outcome="failed"}``).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from skulens.control.routing import (
    CANARY_PREFIX,
    DRIFT,
    ROUTING,
    Experiment,
    Plan,
    Routing,
    RoutingError,
    VariantSpec,
    assign,
    change_routing,
)
from skulens.control.stats import VariantStats
from skulens.control.store import Conflict
from skulens.serving.feedback import ServiceEvents
from skulens.serving.loader import Served, load_served
from skulens.serving.pipeline import RequestError, SearchRequest, ServingConfig


class ReloadError(RuntimeError):
    """A reload that failed; the variant it targeted still serves its previous version."""


class ServingState:
    def __init__(self, settings: Any, metrics: Any, *, catalog: str | None = None,
                 loader: Callable[..., Served] = load_served, cascade: Any = None) -> None:
        self.settings, self.metrics, self.loader = settings, metrics, loader
        self.catalog = catalog or settings.retrieval.catalog
        self.cascade = cascade
        self.variants: dict[str, Served] = {}
        self.specs: dict[str, VariantSpec] = {}  # the versions each loaded variant was asked for
        self.traffic: dict[str, float] = {"control": 1.0}  # the split in force (loaded variants only)
        self.salt, self.experiment, self.method = "traffic", None, "ab"
        self.routing = Routing()
        self.control: Any = None  # the shared control store (connect()); None: this process alone
        self.stats = VariantStats()
        self._failed: dict[str, VariantSpec] = {}  # a variant whose build failed, until its spec changes
        self._errors: dict[str, str] = {}  # ... and why
        self.config = ServingConfig.from_settings(settings.serving)
        self.started = time.time()
        self._lock = threading.Lock()
        # An admin reload of control to a named index version pins it there; the index watcher
        # then leaves it alone until a reload without a version (or a restart).
        self.pinned_index: str | None = None
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        # The loop: search records and client events out (no event log until load() makes one:
        # searches still get their search_id), online features in (None: none read).
        self.events = ServiceEvents(None, metrics, catalog=self.catalog)
        self.events.on_click = self._click
        self._features: Any = None

    @classmethod
    def load(cls, settings: Any, metrics: Any, *, catalog: str | None = None, with_cascade: bool = True
             ) -> ServingState:
        """Load the champion variant and the cascade ``serving.llm`` describes."""
        from skulens.serving.llm.cascade import SharedDailyBudget, build_cascade

        state = cls(settings, metrics, catalog=catalog)
        state.connect()
        control = state.routing.plan().specs["control"]
        served = state._build("control", control)  # _build applies serving.reranker_version
        if with_cascade:
            state.cascade = build_cascade(settings, served.vocabulary, on_step=metrics.observe_llm_step)
            state.cascade.daily = SharedDailyBudget(state.control, settings.serving.llm.per_day_usd)
            served.pipeline.cascade = state.cascade
        state._install("control", served, control)
        state.sync()  # the other variants the routing names (an experiment or a canary in progress)
        if settings.serving.watch_index_s > 0:
            state.watch_index(settings.serving.watch_index_s)
        state.follow_routing(settings.serving.shared.sync_s)
        state.start_loop()
        return state

    # -- the shared routing --------------------------------------------------------------------
    def connect(self) -> None:
        """Open the shared control store and read its routing; the first worker ever seeds it from
        configuration (``serving.traffic``, ``serving.experiments``)."""
        from skulens.control.store import open_control

        self.control = open_control(self.settings)
        configured = [Experiment.parse(e.model_dump()) for e in self.settings.serving.experiments]

        def seed(routing: Routing) -> None:
            known = {e.name for e in routing.experiments}
            routing.experiments += [e for e in configured if e.name not in known]

        self.update_routing(seed)

    def update_routing(self, change: Any) -> Routing:
        """Apply ``change(routing)`` to the shared routing (compare-and-set, retried when another
        worker wrote in between), then follow it here at once."""
        if self.control is None:
            routing = Routing.from_doc(self.routing.to_doc(), self.routing.revision)
            change(routing)
            routing.revision += 1
        else:
            written = change_routing(self.control, change)
            if written is None:
                raise RequestError("the routing kept changing under this update; try again", status=409)
            routing = written
        self.routing = routing
        self._apply(routing.plan())
        return routing

    def sync(self) -> None:
        """Follow the shared routing (load what it names, drop what it does not, take its split) and
        add this worker's per-variant statistics to the store."""
        if self.control is not None:
            doc, revision = self.control.read(ROUTING)
            if revision != self.routing.revision:
                self.routing = Routing.from_doc(doc, revision)
            self.stats.flush(self.control, self.routing.stats_window)
            self._expose_drift()
        self._apply(self.routing.plan())
        if self.control is not None:
            self.report_worker()

    def _expose_drift(self) -> None:
        """monitor_drift's latest decision per check as gauges (read when its revision changes)."""
        doc, revision = self.control.read(DRIFT)
        if doc is None or revision == getattr(self, "_drift_revision", None):
            return
        self._drift_revision = revision
        for check, drifted in (doc.get("checks") or {}).items():
            self.metrics.drift_drifted.labels(check=str(check)).set(float(bool(drifted)))

    def report_worker(self) -> None:
        """This worker's loaded variants and failed builds in the store's ``workers`` document, so
        that a rollout can wait until every worker serves its canary (or learn that one cannot)."""
        from skulens.control.routing import WORKERS

        now = time.time()
        mine = {"at": now, "variants": {n: s.to_dict() for n, s in self.specs.items() if n in self.variants},
                "failed": {n: {**s.to_dict(), "error": self._errors.get(n)} for n, s in self._failed.items()}}
        key = f"{os.uname().nodename}:{os.getpid()}"
        for _ in range(3):
            doc, revision = self.control.read(WORKERS)
            workers = {k: v for k, v in (doc or {}).items() if now - v.get("at", 0) < 30}
            workers[key] = mine
            try:
                self.control.write(WORKERS, workers, expect=revision)
                return
            except Conflict:
                continue

    def follow_routing(self, every_s: float) -> None:
        """:meth:`sync` from a background thread every ``every_s`` seconds."""
        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    self.sync()
                except Exception:  # noqa: BLE001, S110 - an unreachable store must not stop serving
                    self.metrics.reloads.labels(target="routing", outcome="failed").inc()
        threading.Thread(target=loop, name="skulens-routing", daemon=True).start()

    def _apply(self, plan: Plan) -> None:
        for name, spec in plan.specs.items():
            if name in self.variants and self.specs.get(name) == spec:
                continue
            if self._failed.get(name) == spec:
                continue  # failed before with these versions: wait for a different spec
            same = next((n for n, s in self.specs.items() if s == spec and n in self.variants), None)
            if same is not None:
                self._install(name, self.variants[same], spec)
                continue
            try:
                self._install(name, self._build(name, spec), spec)
            except Exception as exc:  # noqa: BLE001 - counted; the variant's share goes to control meanwhile
                self._failed[name] = spec
                self._errors[name] = f"{type(exc).__name__}: {exc}"[:300]
                self.metrics.reloads.labels(target=name, outcome="failed").inc()
        for name in [n for n in self.variants if n not in plan.specs]:
            self._uninstall(name)
        loaded = {n: share for n, share in plan.shares.items() if n in self.variants}
        loaded["control"] = loaded.get("control", 0.0) + sum(s for n, s in plan.shares.items() if n not in loaded)
        for name in set(self.traffic) | set(loaded):
            self.metrics.variant_share.labels(variant=name).set(loaded.get(name, 0.0))
        self.metrics.canary_active.set(float(bool(plan.experiment and plan.experiment.startswith(CANARY_PREFIX))))
        with self._lock:
            self.traffic, self.salt, self.experiment, self.method = loaded, plan.salt, plan.experiment, plan.method
        control = plan.specs.get("control")
        self.pinned_index = control.index_version if control else None

    def _install(self, name: str, served: Served, spec: VariantSpec) -> None:
        with self._lock:
            old = self.variants.get(name)
            self.variants[name] = served
            self.specs[name] = spec
            self._failed.pop(name, None)
            # Names that shared the old pipeline with the same versions move with it (an A/A arm).
            for other, held in list(self.variants.items()):
                if held is old and other != name and self.specs.get(other) == spec:
                    self.variants[other] = served
            still_used = any(held is old for held in self.variants.values())
        if old is not None and old is not served and not still_used:
            # Searches that took the old pipeline finish on it; it closes when the last one ends.
            retire = getattr(old.pipeline, "retire", None) or old.pipeline.close
            retire()

    def _uninstall(self, name: str) -> None:
        if name == "control":
            return
        with self._lock:
            old = self.variants.pop(name, None)
            self.specs.pop(name, None)
            still_used = any(held is old for held in self.variants.values())
        if old is not None and not still_used:
            retire = getattr(old.pipeline, "retire", None) or old.pipeline.close
            retire()

    @property
    def features(self) -> Any:
        """The online feature cache every variant's pipeline reads (None: no online features)."""
        return self._features

    @features.setter
    def features(self, cache: Any) -> None:
        self._features = cache
        for served in self.variants.values():
            served.pipeline.features = cache

    def start_loop(self) -> None:
        """The event log (``stream`` settings) and the online feature cache."""
        from skulens.streaming.online import FeatureCache, open_store

        stream = self.settings.stream
        self.events = ServiceEvents.from_settings(self.settings, self.metrics, self.catalog)
        self.events.on_click = self._click
        self.features = FeatureCache(lambda: open_store(self.settings), stream.features_refresh_s,
                                     stream.features_stale_s).start()

    # -- following the published index ---------------------------------------------------------
    def published_index(self) -> str | None:
        """The catalogue's published index version (its ``CURRENT``)."""
        from skulens.storage.layout import index_store

        return index_store(self.settings, self.catalog).current_id()

    def follow_published(self) -> str | None:
        """Reload control when the published index is not the one it serves (a build published a new
        version, or a rollback an old one); the version loaded, or None when nothing changed."""
        control = self.variants.get("control")
        current = self.published_index()
        if control is None or current is None or self.pinned_index is not None:
            return None
        if control.pipeline.versions.get("index") == current:
            return None
        try:
            self.reload("control")
        except ReloadError:
            return None  # counted by reload; the old version keeps serving and the next look retries
        return current

    def watch_index(self, every_s: float) -> None:
        """Follow the published index from a background thread, every ``every_s`` seconds."""
        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    self.follow_published()
                except Exception:  # noqa: BLE001, S110 - a failed look must not end the watcher
                    pass
        self._watcher = threading.Thread(target=loop, name="skulens-index-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop the watchers; write what the event log holds (graceful shutdown)."""
        self._stop.set()
        self.events.close()
        if self.features is not None:
            self.features.close()

    def _build(self, variant: str, spec: VariantSpec | None = None) -> Served:
        # A reload that names no reranker version keeps the one configured (serving.reranker_version).
        spec = spec or VariantSpec()
        config = ServingConfig(**{**self.config.__dict__, "variant": variant})
        extra = {"ranker_version": spec.ranker_version} if spec.ranker_version is not None else {}
        served = self.loader(self.settings, self.catalog, config, index_version=spec.index_version,
                             reranker_version=spec.reranker_version or self.settings.serving.reranker_version,
                             cascade=self.cascade, on_batch=self.metrics.observe_batch, **extra)
        served.pipeline.features = self._features
        if hasattr(served.pipeline, "warm_up"):
            served.pipeline.warm_up()  # before the variant takes traffic (and before /readyz says ready)
        return served

    # -- admin ---------------------------------------------------------------------------------
    def reload(self, variant: str = "control", index_version: str | None = None,
               reranker_version: int | None = None, ranker_version: int | None = None) -> dict[str, str]:
        """Load ``variant`` anew (named versions, else the published ones) here, then write it to the
        shared routing so that every other worker loads it too."""
        if not variant or len(variant) > 64 or not variant.replace("_", "").replace("-", "").isalnum():
            raise RequestError("variant must be 1-64 letters, digits, '-' or '_'")
        spec = VariantSpec(index_version, reranker_version, ranker_version)
        try:
            served = self._build(variant, spec)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old variant serving
            self.metrics.reloads.labels(target=variant, outcome="failed").inc()
            old = self.variants.get(variant)
            serving = old.pipeline.versions if old else {}
            raise ReloadError(f"reload of {variant!r} failed ({type(exc).__name__}: {exc}); "
                              f"still serving {serving or 'nothing under that name'}") from exc
        self._install(variant, served, spec)
        if self.routing.variants.get(variant) != spec:  # the same versions anew (a newly published index): no write
            self.update_routing(lambda routing: routing.variants.__setitem__(variant, spec))
        self.metrics.reloads.labels(target=variant, outcome="ok").inc()
        return served.pipeline.versions

    def set_traffic(self, split: Mapping[str, Any]) -> dict[str, float]:
        """Shares per variant (declared in the routing, non-negative, adding up to 1), for every worker."""
        try:
            shares = self.routing.check_traffic(split)
        except RoutingError as exc:
            raise RequestError(str(exc)) from exc

        def change(routing: Routing) -> None:
            routing.traffic = shares
        self.update_routing(change)
        return dict(shares)

    def start_experiment(self, raw: Any) -> dict[str, Any]:
        """Declare an experiment (replacing one of the same name) for every worker."""
        try:
            experiment = Experiment.parse(raw)
        except RoutingError as exc:
            raise RequestError(str(exc)) from exc
        if experiment.name.startswith("canary-"):
            raise RequestError("experiment names starting with 'canary-' belong to deploy_canary")

        def change(routing: Routing) -> None:
            routing.experiments = [e for e in routing.experiments if e.name != experiment.name] + [experiment]
        self.update_routing(change)
        if self.control is not None:
            self.control.append("experiments", experiment.to_dict())  # the report reads the shares here
        return experiment.to_dict()

    def stop_experiment(self, name: str) -> bool:
        """Remove experiment ``name`` from the routing (its events stay for the report)."""
        found = any(e.name == name for e in self.routing.experiments)

        def change(routing: Routing) -> None:
            routing.experiments = [e for e in routing.experiments if e.name != name]
        self.update_routing(change)
        return found

    def variant_for(self, key: str | None) -> str:
        """The variant of a user (or session): their salted bucket, so a user keeps their arm."""
        return assign(key, self.traffic, self.salt)

    def status(self) -> dict[str, Any]:
        cascade = self.cascade
        return {"catalog": self.catalog, "variants": {n: v.pipeline.versions for n, v in self.variants.items()},
                "traffic": self.traffic, "salt": self.salt, "experiment": self.experiment,
                "routing": {"revision": self.routing.revision, "store": self.settings.serving.shared.backend
                            if self.control is not None else "none (this process only)",
                            "experiments": [e.name for e in self.routing.experiments],
                            "stats_window": self.routing.stats_window,
                            "failed": {n: s.to_dict() for n, s in self._failed.items()}},
                "uptime_s": round(time.time() - self.started, 1),
                "worker_pid": os.getpid(), "published_index": self._published_or_none(),
                "pinned_index": self.pinned_index, "watching_index": self._watcher is not None,
                # Routing, experiments, canary statistics and the LLM day's spend are shared
                # (serving.shared); these stay in each worker.
                "per_worker": {"state": ["llm.breakers", "llm.cache", "admission limit", "query vector cache",
                                         "recent client event ids (duplicates; the stream job dedupes exactly)"]},
                "loop": self._loop_status(),
                "llm": {"tiers": cascade.names, "ready": {t.name: t.ready() for t, _ in cascade.tiers},
                        "breakers": {n: b.state for n, b in cascade.breakers.items()},
                        "spent_today_usd": round(cascade.daily.spent_today(), 6), "cache_entries": len(cascade.cache)}
                if cascade else None}

    def _click(self, search_id: str, position: int | None = None) -> None:
        """Count a click for the variant its search id ends in (``<id>.<variant>``; an interleaved
        page's ``<id>.il.<mask>`` counts for ``interleaved``)."""
        if ".il." in search_id:
            self.stats.click("interleaved")
            return
        variant = search_id.rsplit(".", 1)[-1]
        if variant in self.variants:  # a search id naming no loaded variant counts for none
            self.stats.click(variant)

    def _loop_status(self) -> dict[str, Any]:
        """This worker's event log and feature cache: what landed, what was lost, how fresh."""
        log, cache = self.events.log, self._features
        return {"events": None if log is None else {"written": log.written, "dropped": log.dropped,
                                                    "backlog": log.backlog, "last_error": log.last_error},
                "features": None if cache is None else {"status": cache.status() or "fresh",
                                                        "refreshed_at": cache.refreshed_at,
                                                        "last_error": cache.last_error}}

    def _published_or_none(self) -> str | None:
        try:
            return self.published_index()
        except OSError:
            return None

    # -- requests ------------------------------------------------------------------------------
    def served(self, key: str | None) -> Served:
        return self.variants.get(self.variant_for(key)) or self.variants["control"]

    def search(self, request: SearchRequest) -> dict[str, Any]:
        # Take the variant and count the search on it in one step, so that a reload between the two
        # cannot close the pipeline under a search that is about to start on it.
        with self._lock:
            name = self.variant_for(request.user_id or request.session_id)
            served = self.variants.get(name) or self.variants["control"]
            name = name if name in self.variants else "control"
            experiment = self.experiment
            if self.method == "interleave" and name != "control":
                pair = {"control": self.variants["control"], name: served}
                for one in pair.values():
                    if hasattr(one.pipeline, "enter"):
                        one.pipeline.enter()
            else:
                pair = None
                entered = hasattr(served.pipeline, "enter")
                if entered:
                    served.pipeline.enter()
        if pair is not None:
            return self._interleaved(request, name, pair, experiment)
        started = time.perf_counter()
        try:
            result = served.pipeline.search(request, entered=True) if entered else served.pipeline.search(request)
        except Exception:
            self.stats.search(name, (time.perf_counter() - started) * 1000, error=True, fallback=True, zero=True)
            raise
        self.metrics.observe_search(result)
        self.stats.search(name, result.total_ms, error=stage_failed(result.stages), fallback=bool(result.fallbacks),
                          zero=not result.items)
        body = self.with_photos(result.to_dict(), served)
        body["variant"] = name  # an arm that shares another's pipeline (same versions) is still itself
        if experiment is not None:
            body["versions"] = {**body["versions"], "experiment": experiment}  # the exposure, logged with the search
        for item in body["items"]:
            item["category"] = served.categories.get(item["product_id"])
        return body

    def _interleaved(self, request: SearchRequest, challenger: str, pair: dict[str, Served],
                     experiment: str | None) -> dict[str, Any]:
        """One page from both arms by team draft (each result tagged with the arm that placed it);
        both pipelines run, so an interleaved search costs about two."""
        import random

        from skulens.control.routing import team_draft, team_mask

        started = time.perf_counter()
        results = {}
        for arm, served in pair.items():
            entered = hasattr(served.pipeline, "enter")
            results[arm] = served.pipeline.search(request, entered=True) if entered else served.pipeline.search(request)
            self.metrics.observe_search(results[arm])
        control = results["control"]
        body = self.with_photos(control.to_dict(), pair["control"])
        pages = {arm: self.with_photos(result.to_dict(), pair[arm])["items"] for arm, result in results.items()}
        body["items"] = team_draft(pages, max(len(page) for page in pages.values()), random.random)
        for item in body["items"]:
            item["category"] = pair[item["team"]].categories.get(item["product_id"])
        fallbacks = sorted({f for result in results.values() for f in result.fallbacks})
        mask = team_mask(body["items"], challenger)
        body.update(variant="interleaved", fallbacks=fallbacks, _id_suffix=f".il.{mask}",
                    versions={**control.versions, "experiment": experiment, "interleaved_with": challenger,
                              **{f"{challenger}.{k}": v for k, v in results[challenger].versions.items()}})
        self.stats.search("interleaved", (time.perf_counter() - started) * 1000,
                          error=any(stage_failed(r.stages) for r in results.values()), fallback=bool(fallbacks),
                          zero=not body["items"])
        return body

    def with_photos(self, body: dict[str, Any], served: Served | None = None) -> dict[str, Any]:
        """``body``'s items with the URL of their photo (None for a product without one)."""
        images = (served or self.variants["control"]).images
        for item in body["items"]:
            item["image"] = f"/products/{item['product_id']}/image" if item["product_id"] in images else None
        return body

    def recommender(self, key: str | None = None) -> Any:
        from skulens.serving.recommend import Recommender, popularity_from_events

        served = self.served(key)
        if getattr(served, "recommender", None) is None:
            popularity = popularity_from_events(self.settings.events_dir / self.catalog)
            served.recommender = Recommender(served.live, served.titles, served.categories, popularity,
                                             features=self.features)
        return served.recommender


_RAISED = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Failure)\b")


def stage_failed(stages: Any) -> bool:
    """Whether a stage raised (its fallback names an exception; a late stage is not an error): the
    canary's error signal."""
    return any(stage.status == "fallback" and _RAISED.search(str(stage.detail or "")) for stage in stages)
