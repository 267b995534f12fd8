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


def test_a_reranker_that_loses_to_its_baselines_is_refused_even_without_a_champion():
    """The wave-1 case: cross-encoder 0.944 against BM25 0.945 and the MiniLM bi-encoder 0.950."""
    rule = [GateRule(metric="test_ce", min=0.0, beats=["baseline_bm25", "baseline_bi"])]
    ok, reasons, checks = decide_promotion(rule, {"test_ce": 0.944, "baseline_bm25": 0.945, "baseline_bi": 0.950}, None)
    assert not ok and len(reasons) == 2 and "does not beat baseline baseline_bm25 0.9450" in reasons[0]
    assert checks[0]["baselines"] == {"baseline_bm25": 0.945, "baseline_bi": 0.950}
    ok, _, _ = decide_promotion(rule, {"test_ce": 0.96, "baseline_bm25": 0.945, "baseline_bi": 0.950}, None)
    assert ok
    margin = [GateRule(metric="test_ce", beats=["baseline_bm25"], min_margin=0.02)]
    ok, reasons, _ = decide_promotion(margin, {"test_ce": 0.96, "baseline_bm25": 0.945}, None)
    assert not ok and "by more than 0.0200" in reasons[0]
    ok, reasons, _ = decide_promotion(rule, {"test_ce": 0.99}, None)  # a baseline not measured fails the rule
    assert not ok and "baseline baseline_bm25 was not measured" in reasons[0]


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


def test_judged_share_of_a_query_that_retrieved_nothing_is_zero_not_an_error():
    qrels = {"a": {"d1": 1}, "b": {"d2": 1}}
    scores = evaluate(qrels, {"a": {"d1": 1.0, "x": 0.5}, "b": {}}, ["nDCG@10", "Judged@10"])
    assert scores == {"nDCG@10": 0.5, "Judged@10": 0.25}
