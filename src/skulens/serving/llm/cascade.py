"""The LLM cascade: cheap tiers first, a hosted model only when the cheaper ones cannot answer.

For each query the cascade tries its tiers in order (cache → rules → local model → hosted
models). A tier's answer is accepted when it validates (JSON schema and catalogue vocabulary)
**and**, when the caller gives a ``useful`` check, the search it leads to finds something useful;
otherwise the cascade escalates. Each paid tier is skipped when its worst-case cost would break the
per-request or per-day budget, each provider has a timeout and a circuit breaker, and every step
(tokens, cost, time, outcome) is reported so the service can log and count it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from skulens.serving.llm.tiers import PROMPT, Tier, TierUnavailable, elapsed_ms, estimate_tokens
from skulens.serving.llm.understanding import InvalidAnswer, Understanding, Vocabulary, validate


@dataclass(frozen=True)
class TierPolicy:
    """How the cascade treats one tier: its timeout and its price (USD per million tokens)."""

    timeout_ms: float = 1000.0
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0
    max_tokens: int = 200

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.usd_per_mtok_in + tokens_out * self.usd_per_mtok_out) / 1e6


@dataclass
class Step:
    tier: str
    # accepted | not_useful | invalid | error | timeout | unavailable | circuit_open | over_budget | cache_hit
    outcome: str
    ms: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    detail: str | None = None


@dataclass
class CascadeResult:
    understanding: Understanding | None
    tier: str | None
    steps: list[Step] = field(default_factory=list)

    @property
    def cost_usd(self) -> float:
        return sum(s.cost_usd for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "understanding": self.understanding.to_dict() if self.understanding else None,
                "cost_usd": round(self.cost_usd, 6), "steps": [s.__dict__ for s in self.steps]}


class CircuitBreaker:
    """Open after ``failures`` failures in a row; one trial call after ``reset_s``; closed on success."""

    def __init__(self, failures: int = 3, reset_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.reset_s, self.clock = failures, reset_s, clock
        self.failures, self.opened_at = 0, None

    def allow(self) -> bool:
        return self.opened_at is None or self.clock() - self.opened_at >= self.reset_s

    def record(self, ok: bool) -> None:
        if ok:
            self.failures, self.opened_at = 0, None
            return
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = self.clock()

    @property
    def state(self) -> str:
        return "closed" if self.opened_at is None else ("half_open" if self.allow() else "open")


class DailyBudget:
    """Spend per UTC day; refuses a call whose worst case would pass ``limit_usd``."""

    def __init__(self, limit_usd: float, today: Callable[[], str] | None = None) -> None:
        self.limit, self.today = limit_usd, today or (lambda: datetime.now(UTC).date().isoformat())
        self.day, self.spent = self.today(), 0.0
        self._lock = threading.Lock()

    def _roll(self) -> None:
        if self.today() != self.day:
            self.day, self.spent = self.today(), 0.0

    def can_spend(self, usd: float) -> bool:
        with self._lock:
            self._roll()
            return self.spent + usd <= self.limit

    def spend(self, usd: float) -> None:
        with self._lock:
            self._roll()
            self.spent += usd

    def spent_today(self) -> float:
        with self._lock:
            self._roll()
            return self.spent


class SharedDailyBudget(DailyBudget):
    """The day's spend kept in the shared control store, so that all workers and replicas spend one
    budget (``per_day_usd`` is the service's, not each worker's). Without a store: this process's."""

    def __init__(self, store: Any, limit_usd: float, today: Callable[[], str] | None = None) -> None:
        super().__init__(limit_usd, today)
        self.store = store

    def _key(self) -> str:
        return f"llm:spend:{self.today()}"

    def can_spend(self, usd: float) -> bool:
        if self.store is None:
            return super().can_spend(usd)
        return self.spent_today() + usd <= self.limit

    def spend(self, usd: float) -> None:
        if self.store is None:
            super().spend(usd)
        else:
            self.store.add(self._key(), {"usd": usd})

    def spent_today(self) -> float:
        if self.store is None:
            return super().spent_today()
        return float(self.store.totals(self._key()).get("usd", 0.0))


class Cascade:
    """Tiers in escalation order, each with its :class:`TierPolicy`; see the module docstring."""

    def __init__(self, tiers: Sequence[tuple[Tier, TierPolicy]], vocabulary: Vocabulary | None = None, *,
                 per_request_usd: float = 0.01, per_day_usd: float = 5.0, cache_size: int = 10_000,
                 breaker_failures: int = 3, breaker_reset_s: float = 30.0,
                 on_step: Callable[[Step], None] | None = None) -> None:
        self.tiers = list(tiers)
        self.vocabulary = vocabulary
        self.per_request_usd = per_request_usd
        self.daily = DailyBudget(per_day_usd)
        self.breakers = {tier.name: CircuitBreaker(breaker_failures, breaker_reset_s) for tier, _ in self.tiers}
        self.cache: OrderedDict[str, tuple[Understanding, str]] = OrderedDict()
        self.cache_size = cache_size
        self.on_step = on_step or (lambda step: None)
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return [tier.name for tier, _ in self.tiers]

    def cached(self, query: str) -> tuple[Understanding, str] | None:
        key = query.casefold().strip()
        with self._lock:
            hit = self.cache.get(key)
            if hit is not None:
                self.cache.move_to_end(key)
            return hit

    def _remember(self, query: str, understanding: Understanding, tier: str) -> None:
        with self._lock:
            self.cache[query.casefold().strip()] = (understanding, tier)
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)

    def understand(self, query: str, useful: Callable[[Understanding], bool] | None = None, *,
                   tiers: Sequence[str] | None = None, deadline_s: float | None = None,
                   use_cache: bool = True) -> CascadeResult:
        """Walk the tiers (all, or those named in ``tiers``) until one answer is accepted.

        ``deadline_s`` (a ``time.perf_counter()`` value) bounds the whole walk: a tier gets the
        smaller of its own timeout and the time left. With no tier accepted, the first valid answer
        (if any) is returned with ``tier=None`` so the caller can still use its filters."""
        result = CascadeResult(None, None)
        if use_cache and (hit := self.cached(query)) is not None:
            self._step(result, Step("cache", "cache_hit", detail=hit[1]))
            result.understanding, result.tier = hit[0], "cache"
            return result
        fallback: Understanding | None = None
        for tier, policy in self.tiers:
            if tiers is not None and tier.name not in tiers:
                continue
            timeout_s = policy.timeout_ms / 1000
            if deadline_s is not None:
                timeout_s = min(timeout_s, deadline_s - time.perf_counter())
                if timeout_s <= 0.005:
                    self._step(result, Step(tier.name, "timeout", detail="no time left"))
                    break
            breaker = self.breakers[tier.name]
            if not breaker.allow():
                self._step(result, Step(tier.name, "circuit_open", detail=f"{breaker.failures} failures in a row"))
                continue
            worst = policy.cost(estimate_tokens(PROMPT + query), policy.max_tokens)
            if worst > 0 and (result.cost_usd + worst > self.per_request_usd or not self.daily.can_spend(worst)):
                self._step(result, Step(tier.name, "over_budget", detail=f"worst case ${worst:.5f}"))
                continue
            started = time.perf_counter()
            try:
                answer = tier.answer(query, timeout_s)
            except TierUnavailable as exc:
                self._step(result, Step(tier.name, "unavailable", elapsed_ms(started), detail=str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 - a provider failure escalates, never reaches the shopper
                breaker.record(False)
                timed_out = "timeout" in type(exc).__name__.lower() or "timed out" in str(exc).lower()
                self._step(result, Step(tier.name, "timeout" if timed_out else "error", elapsed_ms(started),
                                        detail=f"{type(exc).__name__}: {exc}"[:300]))
                continue
            breaker.record(True)
            cost = policy.cost(answer.tokens_in, answer.tokens_out)
            self.daily.spend(cost)
            step = Step(tier.name, "accepted", elapsed_ms(started), answer.tokens_in, answer.tokens_out, cost)
            try:
                understanding = validate(answer.payload, self.vocabulary, typed=query)
            except InvalidAnswer as exc:
                step.outcome, step.detail = "invalid", str(exc)[:300]
                self._step(result, step)
                continue
            fallback = fallback or understanding
            if useful is not None and not useful(understanding):
                step.outcome = "not_useful"
                self._step(result, step)
                continue
            self._step(result, step)
            result.understanding, result.tier = understanding, tier.name
            if getattr(tier, "cacheable", True):  # a model's answer is served from the cache next time
                self._remember(query, understanding, tier.name)
            return result
        result.understanding = fallback
        return result

    def _step(self, result: CascadeResult, step: Step) -> None:
        result.steps.append(step)
        self.on_step(step)


def build_cascade(settings: Any, vocabulary: Vocabulary | None = None,
                  on_step: Callable[[Step], None] | None = None, start_local: bool = True) -> Cascade:
    """The cascade ``serving.llm`` describes (tiers made by name from the registry)."""
    from skulens.serving.llm.tiers import make_tier

    llm = settings.serving.llm
    tiers = []
    for spec in llm.tiers:
        options = spec.model_dump(exclude={"kind", "timeout_ms", "usd_per_mtok_in", "usd_per_mtok_out"},
                                  exclude_none=True)
        tier = make_tier(spec.kind, **options)
        if start_local and hasattr(tier, "start"):
            tier.start()
        tiers.append((tier, TierPolicy(spec.timeout_ms, spec.usd_per_mtok_in, spec.usd_per_mtok_out, spec.max_tokens)))
    return Cascade(tiers, vocabulary, per_request_usd=llm.per_request_usd, per_day_usd=llm.per_day_usd,
                   cache_size=llm.cache_size, breaker_failures=llm.breaker_failures,
                   breaker_reset_s=llm.breaker_reset_s, on_step=on_step)
