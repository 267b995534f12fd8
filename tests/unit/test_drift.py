"""monitor_drift over simulated weeks of searches: a query shift (a new category appears, typo-heavy
traffic) triggers retraining exactly once; a stable week never does. (Simulated traffic.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from skulens.pipelines.monitor_drift import monitor_drift

VOCABULARY = ("drill", "cordless", "hammer", "paint", "white", "brush", "ladder", "pipe", "copper", "valve",
              "light", "bulb", "led", "door", "hinge", "screw", "wood", "deck", "stain", "tile")
NEW = ("kayak", "paddle", "tent", "sleeping", "bag", "camping", "lantern")  # a category the catalogue lacks


def _searches(start: datetime, hours: int, rng: np.random.Generator, shifted: bool) -> list[dict]:
    rows = []
    for hour in range(hours):
        for i in range(40):
            words = list(rng.choice(VOCABULARY, rng.integers(1, 4)))
            if shifted and rng.random() < 0.6:
                words = list(rng.choice(NEW, rng.integers(2, 5)))  # the new category, longer queries
                words = [w[:-1] + w[-1] * 2 if rng.random() < 0.5 else w for w in words]  # typos
            search_id = f"{hour}-{i}"
            ts = start + timedelta(hours=hour, minutes=i)
            found = 0 if shifted and words[0] not in VOCABULARY else int(rng.integers(5, 50))
            rows.append({"search_id": search_id, "ts": ts, "event_type": "search", "query": " ".join(words),
                         "results": found, "variant": "control"})
            if found and rng.random() < 0.3:
                rows.append({"search_id": search_id, "ts": ts, "event_type": "click", "query": None,
                             "results": None, "variant": "control"})
    return rows


def _encode(texts: list[str]) -> np.ndarray:
    vectors = np.zeros((len(texts), 32))
    for row, text in enumerate(texts):
        for word in text.split():
            vectors[row, hash(word) % 32] += 1.0
    return vectors


def _week(settings, shift_at_day: int | None) -> list[bool]:
    rng = np.random.default_rng(7)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    rows = []
    for day in range(14):
        shifted = shift_at_day is not None and day >= shift_at_day
        rows += _searches(start + timedelta(days=day), 24, rng, shifted)
    events = pd.DataFrame(rows)
    fast = settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update={
        "drift": settings.monitoring.drift.model_copy(update={"reference_days": 3.0, "current_hours": 24.0})})})
    decisions = []
    for day in range(7, 14):  # once a day over the second week
        now = start + timedelta(days=day + 1)
        decision = monitor_drift(fast, f"day{day}", now=now, events=events, encode=_encode,
                                 vocabulary=set(VOCABULARY))
        decisions.append(decision["triggered"])
    return decisions


def test_a_stable_week_never_triggers(settings):
    assert _week(settings, None) == [False] * 7


def test_a_query_shift_triggers_exactly_once_and_names_its_checks(settings):
    decisions = _week(settings, shift_at_day=9)
    assert decisions.count(True) == 1 and decisions.index(True) == 2  # the first day of the shift
    report = (settings.reports_dir / "drift" / "day9" / "decision.json").read_text()
    assert "query_text" in report and "oov_share" in report
    assert (settings.reports_dir / "drift" / "day9" / "query_text.html").is_file()
