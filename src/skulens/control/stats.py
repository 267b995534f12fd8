"""Per-variant request statistics that every worker adds to the shared store, and what a canary
gate reads back: requests, errors, fallbacks, zero results, clicks and a latency histogram.

Workers count in memory (a lock and a few additions per request) and add their counts to the
store's counters about once a second (:meth:`VariantStats.flush`); a counter key is a *window*
(one canary step), so each step's gates see only that step's traffic.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Upper edges of the latency histogram (ms); the last bucket is everything above.
LATENCY_EDGES_MS = (5, 10, 15, 20, 30, 40, 50, 60, 75, 100, 125, 150, 200, 250, 300, 400, 500, 750, 1000,
                    2000, 5000)
COUNTS = ("requests", "errors", "fallbacks", "zero_results", "clicks")


class VariantStats:
    """This worker's counts per variant since its last flush."""

    def __init__(self) -> None:
        self._counts: dict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._lock = threading.Lock()

    def search(self, variant: str, latency_ms: float, *, error: bool, fallback: bool, zero: bool) -> None:
        bucket = f"lat_{bisect.bisect_left(LATENCY_EDGES_MS, latency_ms)}"
        with self._lock:
            counts = self._counts[variant]
            counts["requests"] += 1
            counts[bucket] += 1
            counts["errors"] += error
            counts["fallbacks"] += fallback
            counts["zero_results"] += zero

    def click(self, variant: str) -> None:
        with self._lock:
            self._counts[variant]["clicks"] += 1

    def flush(self, store: Any, window: str | None) -> int:
        """Add the counts to ``store`` under ``window`` (dropped when there is no window); the number
        of variants written."""
        with self._lock:
            counts, self._counts = self._counts, defaultdict(lambda: defaultdict(float))
        if window is None:
            return 0
        for variant, fields in counts.items():
            store.add(window_key(window, variant), dict(fields))
        return len(counts)


def window_key(window: str, variant: str) -> str:
    return f"stats:{window}:{variant}"


@dataclass(frozen=True)
class Summary:
    """One variant's traffic over a window."""

    requests: int
    errors: int
    fallbacks: int
    zero_results: int
    clicks: int
    p95_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.requests if self.requests else 0.0

    @property
    def zero_result_rate(self) -> float:
        return self.zero_results / self.requests if self.requests else 0.0

    @property
    def ctr(self) -> float:
        return self.clicks / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate, 5),
                "fallback_rate": round(self.fallback_rate, 5), "zero_result_rate": round(self.zero_result_rate, 5),
                "clicks": self.clicks, "ctr": round(self.ctr, 5), "p95_ms": self.p95_ms}


def summarise(totals: Mapping[str, float]) -> Summary:
    """A :class:`Summary` from a window's counters (p95 read off the histogram: the bucket's upper edge)."""
    requests = int(totals.get("requests", 0))
    return Summary(requests, int(totals.get("errors", 0)), int(totals.get("fallbacks", 0)),
                   int(totals.get("zero_results", 0)), int(totals.get("clicks", 0)), _p95(totals, requests))


def _p95(totals: Mapping[str, float], requests: int) -> float | None:
    if not requests:
        return None
    need, seen = 0.95 * requests, 0.0
    for index in range(len(LATENCY_EDGES_MS) + 1):
        seen += totals.get(f"lat_{index}", 0)
        if seen >= need:
            last = len(LATENCY_EDGES_MS) - 1
            return float(LATENCY_EDGES_MS[min(index, last)]) * (1 if index <= last else 2)
    return float(LATENCY_EDGES_MS[-1]) * 2  # past the last edge: reported as twice it


def read_window(store: Any, window: str, variants: list[str]) -> dict[str, Summary]:
    return {variant: summarise(store.totals(window_key(window, variant))) for variant in variants}
