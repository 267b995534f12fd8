"""The promotion gate's rules and the IR metrics wrapper (ir-measures)."""

from __future__ import annotations

import numpy as np
import pytest

from skulens.evaluation import dense_run, evaluate, zero_useful_rate
from skulens.settings import GateRule
from skulens.tracking.registry import decide_promotion, model_card

RULES = [GateRule(metric="ndcg", min=0.2, max_drop=0.01), GateRule(metric="recall", min=0.0, max_drop=0.0)]


def test_first_version_only_needs_the_floors():
    ok, reasons, _ = decide_promotion(RULES, {"ndcg": 0.3, "recall": 0.1}, None)
    assert ok and not reasons
    ok, reasons, _ = decide_promotion(RULES, {"ndcg": 0.1, "recall": 0.1}, None)
    assert not ok and "below the floor" in reasons[0]


def test_worse_challenger_is_refused_with_reasons():
    champion = {"ndcg": 0.40, "recall": 0.50}
    ok, reasons, checks = decide_promotion(RULES, {"ndcg": 0.395, "recall": 0.49}, champion)
    assert not ok
    assert reasons == ["recall: 0.4900 is more than 0.0000 below champion 0.5000"]  # ndcg within tolerance
    assert [c["passed"] for c in checks] == [True, False]


def test_missing_metric_refuses():
    ok, reasons, _ = decide_promotion(RULES, {"ndcg": 0.5}, {"ndcg": 0.4, "recall": 0.4})
    assert not ok and "not logged" in reasons[0]


def test_model_card_has_data_metrics_and_config_hash():
    card = model_card("m", data={"rows": 3}, metrics={"ndcg": 0.5}, config={"a": 1}, notes=("n",))
    assert "| ndcg | 0.5000 |" in card and "hash" in card and "- rows: 3" in card and "- n" in card


def test_metrics_through_ir_measures():
    qrels = {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    run = {"q1": {"d2": 2.0, "d1": 1.0}, "q2": {"d9": 1.0}}
    out = evaluate(qrels, run, ["nDCG@10", "RR", "R@1"])
    assert out["RR"] == pytest.approx(0.25)  # q1: 1/2, q2: 0
    assert out["R@1"] == 0.0
    assert zero_useful_rate(qrels, run) == 0.5


def test_dense_run_is_exact_top_k_and_excludes_self():
    docs = np.eye(4, dtype=np.float32)
    run = dense_run(["a", "b"], docs[:2], ["a", "b", "c", "d"], docs, k=2, exclude=["a", None])
    assert "a" not in run["a"] and list(run["b"])[0] == "b"
    assert all(len(v) == 2 for v in run.values())
