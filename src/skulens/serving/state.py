"""What a running service holds: the loaded variants (champion ``control`` and any experiment
arms), the traffic split between them, the LLM cascade, the recommender and the metrics.

Reloading a variant builds the new one completely before swapping it in; when the build fails the
old variant keeps serving and the failure is counted (``skulens_reloads{outcome="failed"}``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

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
        self.traffic: dict[str, float] = {"control": 1.0}
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
        self._features: Any = None

    @classmethod
    def load(cls, settings: Any, metrics: Any, *, catalog: str | None = None, with_cascade: bool = True
             ) -> ServingState:
        """Load the champion variant and the cascade ``serving.llm`` describes."""
        from skulens.serving.llm.cascade import build_cascade

        state = cls(settings, metrics, catalog=catalog)
        served = state._build("control", None, None)  # _build applies serving.reranker_version
        if with_cascade:
            state.cascade = build_cascade(settings, served.vocabulary, on_step=metrics.observe_llm_step)
            served.pipeline.cascade = state.cascade
        state.variants["control"] = served
        state.set_traffic({name: share for name, share in settings.serving.traffic.items() if name in state.variants}
                          or {"control": 1.0})
        if settings.serving.watch_index_s > 0:
            state.watch_index(settings.serving.watch_index_s)
        state.start_loop()
        return state

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

    def _build(self, variant: str, index_version: str | None, reranker_version: int | None) -> Served:
        # A reload that names no reranker version keeps the one configured (serving.reranker_version).
        reranker_version = reranker_version or self.settings.serving.reranker_version
        config = ServingConfig(**{**self.config.__dict__, "variant": variant})
        served = self.loader(self.settings, self.catalog, config, index_version=index_version,
                             reranker_version=reranker_version, cascade=self.cascade,
                             on_batch=self.metrics.observe_batch)
        served.pipeline.features = self._features
        if hasattr(served.pipeline, "warm_up"):
            served.pipeline.warm_up()  # before the variant takes traffic (and before /readyz says ready)
        return served

    # -- admin ---------------------------------------------------------------------------------
    def reload(self, variant: str = "control", index_version: str | None = None,
               reranker_version: int | None = None) -> dict[str, str]:
        """Load ``variant`` anew (a named index or reranker version, else the published ones)."""
        if not variant or len(variant) > 64 or not variant.replace("_", "").replace("-", "").isalnum():
            raise RequestError("variant must be 1-64 letters, digits, '-' or '_'")
        try:
            served = self._build(variant, index_version, reranker_version)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old variant serving
            self.metrics.reloads.labels(target=variant, outcome="failed").inc()
            old = self.variants.get(variant)
            serving = old.pipeline.versions if old else {}
            raise ReloadError(f"reload of {variant!r} failed ({type(exc).__name__}: {exc}); "
                              f"still serving {serving or 'nothing under that name'}") from exc
        with self._lock:
            old = self.variants.get(variant)
            self.variants[variant] = served
            if variant == "control":
                self.pinned_index = index_version
        if old is not None:
            # Searches that took the old pipeline finish on it; it closes when the last one ends.
            retire = getattr(old.pipeline, "retire", None) or old.pipeline.close
            retire()
        self.metrics.reloads.labels(target=variant, outcome="ok").inc()
        return served.pipeline.versions

    def set_traffic(self, split: Mapping[str, Any]) -> dict[str, float]:
        """Shares per variant (they must be loaded, non-negative and add up to 1)."""
        if not isinstance(split, Mapping) or not split:
            raise RequestError("traffic must map variant names to shares, e.g. {\"control\": 0.9, \"b\": 0.1}")
        unknown = sorted(set(split) - set(self.variants))
        if unknown:
            raise RequestError(f"variant(s) {', '.join(unknown)} not loaded; load with /admin/reload first")
        shares = {}
        for name, share in split.items():
            if isinstance(share, bool) or not isinstance(share, (int, float)) or share < 0:
                raise RequestError(f"share of {name!r} must be a non-negative number, got {share!r}")
            shares[name] = float(share)
        if abs(sum(shares.values()) - 1.0) > 1e-6:
            raise RequestError(f"shares add up to {sum(shares.values()):g}, not 1")
        with self._lock:
            self.traffic = shares
        return dict(shares)

    def variant_for(self, key: str | None) -> str:
        """The variant of a user (or session): a stable hash bucket, so a user keeps their arm."""
        traffic = self.traffic
        if len(traffic) == 1 or key is None:
            return max(traffic, key=lambda name: traffic[name]) if key is None else next(iter(traffic))
        bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0x100000000
        total = 0.0
        for name, share in sorted(traffic.items()):
            total += share
            if bucket < total:
                return name
        return sorted(traffic)[-1]

    def status(self) -> dict[str, Any]:
        cascade = self.cascade
        return {"catalog": self.catalog, "variants": {n: v.pipeline.versions for n, v in self.variants.items()},
                "traffic": self.traffic, "uptime_s": round(time.time() - self.started, 1),
                "worker_pid": os.getpid(), "published_index": self._published_or_none(),
                "pinned_index": self.pinned_index, "watching_index": self._watcher is not None,
                # Until the shared serving state lands (the canary issue), these live in each worker.
                "per_worker": {"state": ["variants", "traffic", "llm.spent_today_usd", "llm.breakers", "llm.cache",
                                         "admission limit", "query vector cache",
                                         "recent client event ids (duplicates; the stream job dedupes exactly)"],
                               "note": "admin reloads, the traffic split, the LLM daily budget, breakers "
                                       "and cache are held by this worker process only; with several "
                                       "workers, each must be told and each spends its own budget"},
                "loop": self._loop_status(),
                "llm": {"tiers": cascade.names, "ready": {t.name: t.ready() for t, _ in cascade.tiers},
                        "breakers": {n: b.state for n, b in cascade.breakers.items()},
                        "spent_today_usd": round(cascade.daily.spent, 6), "cache_entries": len(cascade.cache)}
                if cascade else None}

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
        return self.variants[self.variant_for(key)]

    def search(self, request: SearchRequest) -> dict[str, Any]:
        # Take the variant and count the search on it in one step, so that a reload between the two
        # cannot close the pipeline under a search that is about to start on it.
        with self._lock:
            served = self.served(request.user_id or request.session_id)
            entered = hasattr(served.pipeline, "enter")
            if entered:
                served.pipeline.enter()
        result = served.pipeline.search(request, entered=True) if entered else served.pipeline.search(request)
        self.metrics.observe_search(result)
        body = self.with_photos(result.to_dict(), served)
        for item in body["items"]:
            item["category"] = served.categories.get(item["product_id"])
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
