import json
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skulens.data.contracts import EVENTS
from skulens.data.events import sessions_ordered
from skulens.data.simulate import SimulationConfig, read_events, simulate_events, write_events


@pytest.fixture(scope="module")
def judgments():
    rng = np.random.default_rng(0)
    rows = []
    for q in range(200):
        for p in range(8):
            rows.append((f"query {q}", f"p{q}-{p}", float(rng.choice([1.0, 2.0, 3.0]))))
    return pa.table({"query": [r[0] for r in rows], "product_id": [r[1] for r in rows],
                     "grade": [r[2] for r in rows], "source": ["test"] * len(rows)})


def _config(**kw):
    return SimulationConfig(**{"users": 400, "days": 5, "start": date(2026, 1, 1), **kw})


def test_same_seed_same_events(judgments):
    a = simulate_events(judgments, _config(seed=3))
    b = simulate_events(judgments, _config(seed=3))
    c = simulate_events(judgments, _config(seed=4))
    assert a.equals(b)
    assert not a.equals(c)
    assert a.schema.equals(EVENTS, check_metadata=False)


def test_position_bias_is_visible(judgments):
    events = simulate_events(judgments, _config(users=1500, ranker_noise=3.0)).to_pandas()
    shown = events[events.event_type == "impression"]
    clicks = events[events.event_type == "click"]
    grade = dict(zip(judgments["product_id"].to_pylist(), judgments["grade"].to_pylist(), strict=True))
    # Compare the same grade at different positions: only position can explain the gap.
    top = shown[shown.product_id.map(grade) == 3.0]
    ctr = (clicks[clicks.product_id.map(grade) == 3.0].groupby("position").size()
           / top.groupby("position").size())
    assert ctr[1] > ctr[3] > ctr[6]
    assert ctr[1] > 2 * ctr[6]


def test_relevance_drives_clicks(judgments):
    events = simulate_events(judgments, _config(users=1500, ranker_noise=3.0)).to_pandas()
    grade = dict(zip(judgments["product_id"].to_pylist(), judgments["grade"].to_pylist(), strict=True))
    events["grade"] = events.product_id.map(grade)
    first = events[events.position == 1]
    ctr = (first[first.event_type == "click"].groupby("grade").size()
           / first[first.event_type == "impression"].groupby("grade").size())
    assert ctr[3.0] > ctr[2.0] > ctr[1.0]


def test_events_are_consistent(judgments):
    table = simulate_events(judgments, _config())
    events = table.to_pandas()
    assert events.event_id.is_unique
    assert sessions_ordered(table)
    assert events.groupby("session_id").user_id.nunique().max() == 1
    assert set(events.event_type) == {"impression", "click", "add_to_cart", "purchase"}
    # Every action follows an impression of the same product in the same session.
    shown = set(zip(events[events.event_type == "impression"].session_id,
                    events[events.event_type == "impression"].product_id, strict=True))
    acted = events[events.event_type != "impression"]
    assert all(key in shown for key in zip(acted.session_id, acted.product_id, strict=True))
    assert events.ts.min() >= __import__("pandas").Timestamp("2026-01-01", tz="UTC")
    assert events.ts.max() < __import__("pandas").Timestamp("2026-01-07", tz="UTC")


def test_experiment_splits_users_and_better_ranker_wins(judgments):
    config = _config(users=1500, experiment="ranker-v2",
                     variants={"control": 2.0, "treatment": 0.1})
    events = simulate_events(judgments, config).to_pandas()
    assert set(events.variant) == {"control", "treatment"}
    assert events.groupby("user_id").variant.nunique().max() == 1
    share = events.drop_duplicates("user_id").variant.value_counts(normalize=True)
    assert 0.4 < share["treatment"] < 0.6
    ctr = (events[events.event_type == "click"].groupby("variant").size()
           / events[events.event_type == "impression"].groupby("variant").size())
    assert ctr["treatment"] > ctr["control"]


def test_written_events_say_they_are_simulated(judgments, tmp_path):
    config = _config()
    table = simulate_events(judgments, config)
    path = write_events(table, tmp_path / "events", config, source="test")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["simulated"] is True and "SIMULATED" in manifest["note"]
    assert manifest["events"] == table.num_rows
    parts = sorted(path.glob("dt=*/part-00000.parquet"))
    assert 1 <= len(parts) <= 6  # 5 days, and a late session may run past midnight
    assert pq.read_schema(parts[0]).metadata[b"simulated"] == b"true"
    assert read_events(tmp_path / "events").num_rows == table.num_rows


def test_invalid_parameters_are_named():
    with pytest.raises(ValueError, match="users"):
        SimulationConfig(users=0)
    with pytest.raises(ValueError, match="two variants"):
        SimulationConfig(experiment="x", variants={"a": 0.1})
