"""monitor_drift over simulated weeks of searches: a query shift (a new category appears, typo-heavy
traffic) triggers retraining exactly once; a stable week never does. (Simulated traffic.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from skulens.data.query_shift import VOCABULARY, hashed_vectors, simulated_searches
from skulens.pipelines.monitor_drift import monitor_drift

START = datetime(2026, 11, 1, tzinfo=UTC)


def _decisions(settings, shift_at_day: int | None, *, shift: float = 0.6, typos: float = 0.5) -> list[bool]:
    rng = np.random.default_rng(7)
    days = [simulated_searches(START + timedelta(days=day), 24, rng,
                               shift=shift if shift_at_day is not None and day >= shift_at_day else 0.0,
                               typos=typos if shift_at_day is not None and day >= shift_at_day else 0.0)
            for day in range(14)]
    events = pd.concat(days, ignore_index=True)
    fast = settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update={
        "drift": settings.monitoring.drift.model_copy(update={"reference_days": 3.0, "current_hours": 24.0})})})
    return [monitor_drift(fast, f"day{day}", now=START + timedelta(days=day + 1), events=events,
                          encode=hashed_vectors, vocabulary=set(VOCABULARY))["triggered"]
            for day in range(7, 14)]  # once a day over the second week


def test_a_stable_week_never_triggers(settings):
    assert _decisions(settings, None) == [False] * 7


def test_a_query_shift_triggers_exactly_once_and_names_its_checks(settings):
    decisions = _decisions(settings, shift_at_day=9)
    assert decisions.count(True) == 1 and decisions.index(True) == 2  # the first day of the shift
    report = (settings.reports_dir / "drift" / "day9" / "decision.json").read_text()
    assert "query_text" in report and "oov_share" in report
    assert (settings.reports_dir / "drift" / "day9" / "query_text.html").is_file()
