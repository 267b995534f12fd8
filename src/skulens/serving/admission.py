"""Admission control: a worker runs at most ``limit`` searches at once, lets up to ``max_waiting``
more wait for a slot (at most ``max_wait_ms``), and refuses the rest at once with HTTP 503 and
``Retry-After``.

Why: on a CPU-bound service, every search admitted beyond what the cores can run only slows the
others down until their stages run past their timeouts and fall back (the reranker skipped, the
dense side dropped). Refusing the excess on purpose, visibly, keeps the admitted searches at full
quality; a client or load balancer retries elsewhere or later. The pipeline's own budget starts
when a search is admitted, so time spent waiting for a slot never makes a stage fall back.

The limit adapts (``adaptive``, AIMD as in TCP's congestion control): a search that finishes with a
stage late (a sign that too many ran at once for these cores) cuts the limit by a quarter, at most
once per round of searches admitted under the old limit; a search whose stages all finished well
inside their timeouts (under half) raises it by ``1 / limit``, so a round of such searches adds one
slot, up to ``max_active``; a search in time but with a stage past half its timeout holds it. The
limit thus settles where the searches admitted finish with room to spare, whatever the hardware,
the catalogue size or the reranker's cost, rather than where a few of them are already late.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass

OUTCOMES = ("ok", "tight", "late")


@dataclass(frozen=True)
class AdmissionConfig:
    """``max_active``: searches run at once per worker (the adaptive limit's ceiling); ``min_active``:
    its floor; ``max_waiting``: searches that may wait for a slot; ``max_wait_ms``: how long one may
    wait; ``retry_after_s``: the hint sent with a 503; ``adaptive``: adapt the limit (else fixed at
    ``max_active``)."""

    max_active: int = 4
    max_waiting: int = 32
    max_wait_ms: float = 250.0
    retry_after_s: int = 1
    min_active: int = 1
    adaptive: bool = True

    def __post_init__(self) -> None:
        if (self.max_active < 1 or self.max_waiting < 0 or self.max_wait_ms < 0 or self.retry_after_s < 0
                or not 1 <= self.min_active <= self.max_active):
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
        self.limit = float(self.config.max_active)
        self.active = 0
        self.refused = 0
        self.admitted = 0  # searches admitted so far (numbers each one)
        self._cut_at = 0  # the admission number at the last cut: later searches ran under the new limit
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in self._waiters)

    async def enter(self) -> tuple[float, int]:
        """Take a slot, waiting if allowed: (seconds waited, admission number for :meth:`leave`).
        Raises :class:`Overloaded`."""
        if self.active < int(self.limit) and not self._waiters:
            return 0.0, self._admit()
        if self.waiting >= self.config.max_waiting:
            self.refused += 1
            raise Overloaded(f"overloaded: {self.active} searches running and {self.waiting} waiting in this "
                             f"worker", self.config.retry_after_s)
        slot: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        started = time.perf_counter()
        try:
            number = await asyncio.wait_for(asyncio.shield(slot), timeout=self.config.max_wait_ms / 1000)
        except TimeoutError as exc:
            if slot.done() and not slot.cancelled():  # granted as the wait ran out: take it
                return time.perf_counter() - started, slot.result()
            slot.cancel()
            self.refused += 1
            raise Overloaded(f"overloaded: no search slot free within {self.config.max_wait_ms:g} ms",
                             max(self.config.retry_after_s, math.ceil(self.config.max_wait_ms / 1000))) from exc
        except asyncio.CancelledError:  # the client went away while waiting
            if slot.done() and not slot.cancelled():
                self.active -= 1  # a slot granted to nobody: pass it on
                self._wake()
            else:
                slot.cancel()
            raise
        finally:
            if slot in self._waiters and slot.done():
                self._waiters.remove(slot)
        return time.perf_counter() - started, number

    def _admit(self) -> int:
        self.active += 1
        self.admitted += 1
        return self.admitted

    def leave(self, number: int = 0, outcome: str = "ok") -> None:
        """Give the slot back. ``outcome``: ``late`` (a stage ran past its timeout: cut the limit),
        ``tight`` (a stage used more than half its timeout: hold it) or ``ok`` (raise it)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        self.active -= 1
        if self.config.adaptive:
            if outcome == "late" and number > self._cut_at:
                self.limit = max(float(self.config.min_active), self.limit * 0.75)
                self._cut_at = self.admitted
            elif outcome == "ok":
                self.limit = min(float(self.config.max_active), self.limit + 1 / self.limit)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active < int(self.limit):
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(self._admit())
