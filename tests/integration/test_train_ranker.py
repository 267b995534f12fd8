"""The train_ranker pipeline for real (events table → LightGBM → MLflow registry → gate → served by
alias), on a synthetic position-biased log written as the stream job writes its events table.
The gate refuses a ranker it cannot check on held-out judged queries, and promotes one that passes."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skulens.settings import load_settings
from skulens.storage.layout import stream_paths
from tests.unit.test_ranker import synthetic_log

pytestmark = pytest.mark.integration


def _events_table(settings, logged) -> None:
    """The synthetic log as events-table rows: impressions with their scores, and the clicks."""
    from skulens.streaming.job import _arrow_schema

    rows = []
    for r in logged.itertuples():
        base = {"search_id": r.search_id, "ts": r.ts.to_pydatetime(), "catalog": "synthetic", "query": r.query,
                "endpoint": "/search", "variant": "control", "orphaned": False, "received_at": r.ts.to_pydatetime()}
        rows.append({**base, "event_id": f"{r.search_id}:{r.position}", "event_type": "impression",
                     "product_id": r.product_id, "position": r.position, "scores": r.scores,
                     "exploration": r.exploration})
        if r.clicked:
            rows.append({**base, "event_id": f"click-{r.search_id}-{r.position}", "event_type": "click",
                         "product_id": r.product_id, "position": r.position})
    table = pa.Table.from_pylist(rows, schema=_arrow_schema(events_only=True))
    folder = stream_paths(settings).events / "date=2026-11-01" / "batch_id=0"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet")


def test_the_gate_refuses_an_unchecked_ranker_and_serves_a_passing_one(tmp_path, monkeypatch):
    from skulens.pipelines import train_ranker as pipeline
    from skulens.serving.loader import champion_ranker
    from skulens.training.ranker import RankerConfig

    monkeypatch.setenv("SKULENS_HOME", str(tmp_path / "home"))
    settings = load_settings("local")
    logged, _ = synthetic_log(searches=3000)
    _events_table(settings, logged)
    config = RankerConfig(n_estimators=80)

    first = pipeline.train_ranker(settings, "r1", "synthetic", config=config)
    metrics = first["metrics"]
    assert metrics["test_ips_clicks_per_search"] > metrics["baseline_logged_clicks_per_search"] * 1.2
    assert first["propensities"]["method"].startswith("swap interventions")
    assert not first["gate"]["promoted"]
    assert any("test_judged_nDCG@10_gain: not logged" in r for r in first["gate"]["reasons"])  # no judged queries
    assert champion_ranker(settings)[0] is None

    # With held-out judged queries that it does not hurt, the same kind of ranker passes.
    monkeypatch.setattr(pipeline, "judged_gain", lambda *a, **k: {"test_judged_nDCG@10_gain": 0.01,
                                                                  "test_judged_nDCG@10": 0.51,
                                                                  "baseline_no_ranker_judged_nDCG@10": 0.50})
    second = pipeline.train_ranker(settings, "r2", "synthetic", config=config)
    assert second["gate"]["promoted"], second["gate"]["reasons"]
    ranker, label = champion_ranker(settings)
    assert ranker is not None and label.startswith("skulens-ranker/2 (LambdaMART")
    report = json.loads((settings.reports_dir / "train_ranker" / "latest.json").read_text())
    assert report["registered"] == 2 and report["gate"]["champion_after"] == 2

    # A ranker that hurts the judged queries is refused even when clicks like it.
    monkeypatch.setattr(pipeline, "judged_gain", lambda *a, **k: {"test_judged_nDCG@10_gain": -0.02})
    third = pipeline.train_ranker(settings, "r3", "synthetic", incremental=True, config=config)
    assert not third["gate"]["promoted"]
    assert any("test_judged_nDCG@10_gain" in r and "below the floor" in r for r in third["gate"]["reasons"])
    assert champion_ranker(settings)[1].startswith("skulens-ranker/2")
