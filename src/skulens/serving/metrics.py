"""skulens' own Prometheus metrics: latency per stage, fallbacks, cache hits, LLM tokens and cost,
zero-result searches, reloads.

``ServingMetrics(bentoml.metrics)`` in the BentoML service (its ``/metrics`` then shows them next
to BentoML's own, in multiprocess mode); ``ServingMetrics.standalone()`` with a private
``prometheus_client`` registry everywhere else (tests, the plain ASGI app).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServingMetrics:
    def __init__(self, factory: ModuleType | Any, registry: Any = None) -> None:
        extra = {"registry": registry} if registry is not None else {}
        self.registry = registry
        self.stage_seconds = factory.Histogram("skulens_stage_seconds", "Time per pipeline stage", ["stage"],
                                               buckets=STAGE_BUCKETS, **extra)
        self.request_seconds = factory.Histogram("skulens_request_seconds", "Time per request", ["endpoint"],
                                                 buckets=STAGE_BUCKETS, **extra)
        self.requests = factory.Counter("skulens_requests", "Requests by endpoint and status", ["endpoint", "status"],
                                        **extra)
        self.fallbacks = factory.Counter("skulens_fallbacks", "Fallbacks taken", ["fallback"], **extra)
        self.zero_results = factory.Counter("skulens_zero_results", "Searches answered with no product",
                                            ["endpoint"], **extra)
        self.cache = factory.Counter("skulens_cache", "Cache lookups", ["cache", "result"], **extra)
        self.llm_calls = factory.Counter("skulens_llm_calls", "LLM cascade steps", ["tier", "outcome"], **extra)
        self.llm_tokens = factory.Counter("skulens_llm_tokens", "LLM tokens", ["tier", "direction"], **extra)
        self.llm_cost = factory.Counter("skulens_llm_cost_usd", "LLM spend in USD", ["tier"], **extra)
        self.reloads = factory.Counter("skulens_reloads", "Admin reloads", ["target", "outcome"], **extra)
        # Per stage and outcome (ok | fallback | skipped): the fallback share of a stage is
        # fallback / all of that stage, the series the alert rules watch (deploy/prometheus).
        self.stage_outcomes = factory.Counter("skulens_stage_outcomes", "Pipeline stage runs by outcome",
                                              ["stage", "status"], **extra)
        self.searches = factory.Counter("skulens_searches", "Searches answered, degraded (any fallback) or not",
                                        ["degraded"], **extra)
        self.admission = factory.Counter("skulens_admission", "Admission decisions (admitted, waited, refused)",
                                         ["endpoint", "outcome"], **extra)
        self.admission_limit = factory.Gauge("skulens_admission_limit", "Searches a worker runs at once (adaptive)",
                                             **extra)
        self.admission_wait = factory.Histogram("skulens_admission_wait_seconds", "Time waited for a search slot",
                                                buckets=STAGE_BUCKETS, **extra)
        self.batch_size = factory.Histogram("skulens_batch_size", "Items per batched model call", ["model"],
                                            buckets=BATCH_BUCKETS, **extra)
        # The event log (search records and client events on their way to the stream job).
        self.events_logged = factory.Counter("skulens_events_logged", "Records written to the landing zone",
                                             **extra)
        self.events_dropped = factory.Counter("skulens_events_dropped", "Records that never reached the landing "
                                              "zone (queue_full, write_error, unserialisable, closed)", ["reason"],
                                              **extra)
        self.events_backlog = factory.Gauge("skulens_events_backlog", "Records queued for the writer", **extra)
        # What the shared routing and monitor_drift say (the Grafana dashboard's canary and drift rows).
        self.variant_share = factory.Gauge("skulens_variant_share", "Share of traffic this worker routes to a "
                                           "variant", ["variant"], **extra)
        self.canary_active = factory.Gauge("skulens_canary_active", "1 while a deploy_canary rollout runs", **extra)
        self.drift_drifted = factory.Gauge("skulens_drift_drifted", "monitor_drift's latest decision per check "
                                           "(1 drifted, 0 stable)", ["check"], **extra)
        self.client_events = factory.Counter("skulens_client_events", "POST /events events by outcome "
                                             "(accepted, duplicate)", ["type", "outcome"], **extra)

    @classmethod
    def standalone(cls) -> ServingMetrics:
        import prometheus_client

        return cls(prometheus_client, registry=prometheus_client.CollectorRegistry())

    def exposition(self) -> bytes:
        """The text format of a standalone registry (BentoML serves its own ``/metrics``)."""
        import prometheus_client

        return prometheus_client.generate_latest(self.registry)

    def observe_search(self, result: Any, endpoint: str = "search") -> None:
        for stage in result.stages:
            self.stage_seconds.labels(stage=stage.name).observe(stage.ms / 1000)
            self.stage_outcomes.labels(stage=stage.name, status=stage.status).inc()
        self.searches.labels(degraded=str(bool(result.fallbacks)).lower()).inc()
        for fallback in result.fallbacks:
            self.fallbacks.labels(fallback=fallback).inc()
        for name, outcome in result.cache.items():
            self.cache.labels(cache=name, result=outcome).inc()
        if not result.items:
            self.zero_results.labels(endpoint=endpoint).inc()

    def observe_batch(self, model: str, size: int) -> None:
        self.batch_size.labels(model=model).observe(size)

    def observe_llm_step(self, step: Any) -> None:
        self.llm_calls.labels(tier=step.tier, outcome=step.outcome).inc()
        if step.outcome == "cache_hit":
            self.cache.labels(cache="llm", result="hit").inc()
        if step.tokens_in:
            self.llm_tokens.labels(tier=step.tier, direction="in").inc(step.tokens_in)
        if step.tokens_out:
            self.llm_tokens.labels(tier=step.tier, direction="out").inc(step.tokens_out)
        if step.cost_usd:
            self.llm_cost.labels(tier=step.tier).inc(step.cost_usd)
