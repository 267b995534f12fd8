"""Great Expectations gates on broken data: each names the rule that failed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skulens.data.contracts import EVENTS
from skulens.quality import QualityGateError, load_suite_spec
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.integration
SUITES = sorted((PROJECT_ROOT / "expectations").glob("*.json"))


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_suite_files_are_valid_expectations(path):
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    spec = load_suite_spec(path)
    assert spec["name"] == path.stem
    for item in spec["expectations"]:
        ExpectationConfiguration(type=item["type"], kwargs=item["kwargs"]).to_domain_obj()  # raises on typos
        assert item.get("meta", {}).get("rule"), f"{path.name}: every expectation names its rule"


def test_events_gate_stops_disordered_and_unknown_events(settings, tmp_path):
    from skulens.quality.datasets import gate_events

    products = tmp_path / "products.parquet"
    pq.write_table(pa.table({"product_id": ["p1", "p2"]}), products)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    events = pa.table({
        "event_id": ["e1", "e2", "e3", "e3"],
        "ts": [t0 + timedelta(seconds=10), t0, t0, t0],
        "user_id": ["u1"] * 4, "session_id": ["s1", "s1", "s2", "s2"], "query": ["q"] * 4,
        "product_id": ["p1", "p2", "p9", "p1"], "event_type": ["impression", "click", "view", "click"],
        "position": pa.array([1, 1, 0, 2], pa.int32()), "experiment": [None] * 4, "variant": [None] * 4,
    }, schema=EVENTS)
    (tmp_path / "events" / "dt=2026-01-01").mkdir(parents=True)
    pq.write_table(events, tmp_path / "events" / "dt=2026-01-01" / "part-00000.parquet")
    (tmp_path / "events" / "manifest.json").write_text("{}")  # non-Parquet files are skipped
    with pytest.raises(QualityGateError) as err:
        gate_events(settings, tmp_path / "events", products)
    message = str(err.value)
    for rule in ("key_unique", "event_type_known", "position_positive", "session_time_ordered", "product_exists"):
        assert rule in message, rule
    assert err.value.result.rows == 4 and not err.value.result.success
