"""Admission control: a worker serves at most ``max_active`` searches at once, lets up to
``max_waiting`` more wait for a slot (at most ``max_wait_ms``), and refuses the rest at once with
HTTP 503 and ``Retry-After``.

Why: on a CPU-bound service, every search admitted beyond what the cores can run only slows the
others down until their stages run past their timeouts and fall back (the reranker skipped, the
dense side dropped). Refusing the excess on purpose, visibly, keeps the admitted searches at full
quality; a client or load balancer retries elsewhere or later. The pipeline's own budget starts
when a search is admitted, so time spent waiting for a slot never makes a stage fall back.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class AdmissionConfig:
    """``max_active``: searches run at once per worker; ``max_waiting``: searches that may wait for a
    slot; ``max_wait_ms``: how long one may wait; ``retry_after_s``: the hint sent with a 503."""

    max_active: int = 4
    max_waiting: int = 32
    max_wait_ms: float = 250.0
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if self.max_active < 1 or self.max_waiting < 0 or self.max_wait_ms < 0 or self.retry_after_s < 0:
            raise ValueError(f"admission settings out of range: {self}")


class Overloaded(Exception):  # noqa: N818 - a condition, answered with 503
    """A request refused by admission control (answered 503 with ``Retry-After``)."""

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, retry_after_s


class Admission:
    """Per-worker admission gate (an asyncio object: use it from the event loop)."""

    def __init__(self, config: AdmissionConfig | None = None) -> None:
        self.config = config or AdmissionConfig()
        self.active = 0
        self.waiting = 0
        self.refused = 0
        self._slots: asyncio.Semaphore | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        if self._slots is None:  # made inside the running loop
            self._slots = asyncio.Semaphore(self.config.max_active)
        return self._slots

    async def enter(self) -> float:
        """Take a slot (waiting if allowed); the seconds waited. Raises :class:`Overloaded`."""
        slots = self._semaphore()
        if not slots.locked():
            await slots.acquire()
            self.active += 1
            return 0.0
        if self.waiting >= self.config.max_waiting:
            self.refused += 1
            raise Overloaded(f"overloaded: {self.active} searches running and {self.waiting} waiting in this "
                             f"worker", self.config.retry_after_s)
        self.waiting += 1
        started = time.perf_counter()
        try:
            await asyncio.wait_for(slots.acquire(), timeout=self.config.max_wait_ms / 1000)
        except TimeoutError as exc:
            self.refused += 1
            raise Overloaded(f"overloaded: no search slot free within {self.config.max_wait_ms:g} ms",
                             max(self.config.retry_after_s, math.ceil(self.config.max_wait_ms / 1000))) from exc
        finally:
            self.waiting -= 1
        self.active += 1
        return time.perf_counter() - started

    def leave(self) -> None:
        self.active -= 1
        self._semaphore().release()
