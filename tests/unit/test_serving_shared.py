"""Two serving workers (two ServingState objects, as two processes would hold) on one shared
control store: an admin change in one reaches the other, the LLM budget is one budget, and a
canary rollout under load is rolled back by its gates or promoted."""

from __future__ import annotations

import threading
import time

import pytest

from skulens.control.routing import VariantSpec
from skulens.pipelines import canary
from skulens.serving.llm.cascade import SharedDailyBudget
from skulens.serving.llm.understanding import Vocabulary
from skulens.serving.loader import Served
from skulens.serving.metrics import ServingMetrics
from skulens.serving.pipeline import SearchPipeline, SearchRequest
from skulens.serving.state import ServingState
from skulens.storage.layout import index_store
from tests.unit.test_serving_pipeline import _catalogue, parts  # noqa: F401 - the fixture

BROKEN_RERANKER = 66


def _broken(query, candidates):
    raise RuntimeError("reranker weights are corrupt")


@pytest.fixture
def workers(parts, settings):  # noqa: F811
    products, titles = _catalogue()
    categories = {row["product_id"]: list(row["category_path"]) for row in products.to_pylist()}
    loads = []

    def loader(settings, catalog, config, *, index_version=None, reranker_version=None, cascade=None,
               on_batch=None, ranker_version=None):
        loads.append((config.variant, index_version, reranker_version))
        if index_version == "unloadable":
            raise FileNotFoundError("no products.parquet in index version 'unloadable'")
        chosen = {**parts, "reranker": _broken if reranker_version == BROKEN_RERANKER else parts["reranker"]}
        pipeline = SearchPipeline(**chosen, config=config, versions={"index": index_version or "published",
                                                                      "reranker": str(reranker_version)})
        return Served(pipeline, parts["store"], titles, categories, {}, Vocabulary.from_products([], []))

    pair = []
    for _ in range(2):
        state = ServingState(settings, ServingMetrics.standalone(), loader=loader)
        state.connect()
        state._install("control", state._build("control", VariantSpec()), VariantSpec())
        pair.append(state)
    yield pair
    for state in pair:
        state.stop()


def test_an_admin_change_in_one_worker_reaches_the_other(workers):
    one, two = workers
    one.reload("b", index_version="v2")
    one.set_traffic({"control": 0.5, "b": 0.5})
    assert "b" not in two.variants
    two.sync()
    assert two.variants["b"].pipeline.versions["index"] == "v2" and two.traffic == {"control": 0.5, "b": 0.5}
    users = [f"user{i}" for i in range(50)]
    assert [one.variant_for(u) for u in users] == [two.variant_for(u) for u in users]  # same salt, same arm
    one.start_experiment({"name": "exp1", "arms": {"control": {"share": 0.2}, "b": {"share": 0.8}}})
    two.sync()
    body = two.search(SearchRequest.parse({"text": "red shirt", "user_id": "u1"}, two.config))
    assert body["versions"]["experiment"] == "exp1" and body["variant"] in {"control", "b"}
    assert one.stop_experiment("exp1") and (two.sync() or two.experiment is None)


def _gauge(state, name, **labels):
    return state.metrics.registry.get_sample_value(name, labels)


def test_every_worker_exposes_the_split_and_monitor_drifts_decision(workers, settings):
    from skulens.pipelines.monitor_drift import _share

    one, two = workers
    one.reload("b", index_version="v2")
    one.set_traffic({"control": 0.75, "b": 0.25})
    _share(settings, {"run_id": "r1", "now": "2026-12-02T00:00:00+00:00", "triggered": True,
                      "checks": [{"name": "query_text", "drifted": True, "skipped": None},
                                 {"name": "catalog", "drifted": False, "skipped": None},
                                 {"name": "query_embeddings", "drifted": False, "skipped": "no encoder"}]})
    two.sync()
    assert _gauge(two, "skulens_variant_share", variant="b") == 0.25
    assert _gauge(two, "skulens_variant_share", variant="control") == 0.75
    assert _gauge(two, "skulens_drift_drifted", check="query_text") == 1.0
    assert _gauge(two, "skulens_drift_drifted", check="catalog") == 0.0
    assert _gauge(two, "skulens_drift_drifted", check="query_embeddings") is None  # skipped: no verdict
    one.set_traffic({"control": 1.0})
    two.sync()
    assert _gauge(two, "skulens_variant_share", variant="b") == 0.0 and _gauge(two, "skulens_canary_active") == 0


def test_the_llm_day_budget_is_one_budget_for_all_workers(workers):
    one, two = workers
    budgets = [SharedDailyBudget(state.control, 1.0) for state in workers]
    budgets[0].spend(0.7)
    assert not budgets[1].can_spend(0.4) and budgets[1].can_spend(0.3)
    budgets[1].spend(0.3)
    assert budgets[0].spent_today() == pytest.approx(1.0)


def _load(workers, stop: threading.Event, counts: dict) -> None:
    """Shoppers round-robin over both workers; every third page a variant shows is clicked.

    Clicks are counted per variant, not drawn at random: both arms then have the same CTR to within
    a click, so the CTR gate (z > 2.5 at a step's end) cannot roll a good challenger back by chance
    (a random draw did, about once in a hundred runs)."""
    i, shown = 0, {}
    while not stop.is_set():
        state = workers[i % 2]
        body = state.search(SearchRequest.parse({"text": "red shirt", "user_id": f"shopper{i % 400}"}, state.config))
        counts[body["variant"]] = counts.get(body["variant"], 0) + 1
        if body["items"]:
            shown[body["variant"]] = shown.get(body["variant"], 0) + 1
            if shown[body["variant"]] % 3 == 0:
                state._click(body["variant"])
        i += 1


@pytest.fixture
def fast_canary(settings, monkeypatch):
    rules = settings.serving.canary.model_copy(update={"hold_s": 1.5, "min_requests": 40, "min_clicks": 10})
    fast = settings.model_copy(update={"serving": settings.serving.model_copy(update={"canary": rules})})
    store = index_store(fast, fast.retrieval.catalog)
    for version in ("v1", "v2"):
        (store.versions / version).mkdir(parents=True)
    store.set_current("v2")  # the challenger's build published v2; control served v1
    monkeypatch.setattr(canary, "_alias_before", lambda settings, kind, challenger: None)
    aliases = []
    monkeypatch.setattr(canary, "_set_aliases", lambda settings, versions: aliases.append(versions))
    monkeypatch.setattr(canary, "_offline_gate", lambda *a: {"passed": True, "reasons": [], "checks": []})
    return fast, store


def _rollout(workers, settings, challenger):
    stop, counts = threading.Event(), {}
    syncing = [threading.Thread(target=_sync, args=(state, stop)) for state in workers]
    load = threading.Thread(target=_load, args=(workers, stop, counts))
    for thread in [*syncing, load]:
        thread.start()
    try:
        record = canary.deploy_canary(settings, challenger, poll_s=0.2, progress=lambda line: None)
    finally:
        stop.set()
        for thread in [*syncing, load]:
            thread.join()
    return record, counts


def _sync(state, stop: threading.Event) -> None:
    while not stop.wait(0.1):
        state.sync()


def test_a_broken_challenger_is_rolled_back_at_the_first_step(workers, fast_canary):
    settings, store = fast_canary
    record, counts = _rollout(workers, settings, VariantSpec("v2", BROKEN_RERANKER))
    assert record["outcome"] == "rolled_back" and record["reason"].startswith("step 1 (5%): error rate")
    assert len(record["steps"]) == 1 and record["canary_share_served"] < 0.15  # about the 5% it was given
    assert store.current_id() == "v1"  # CURRENT back on the champion's index
    for state in workers:
        state.sync()
        assert set(state.variants) == {"control"} and state.routing.stats_window is None
    assert counts.get("canary", 0) > 0
    assert record == workers[0].control.records("rollouts")[-1] | {}  # recorded in the shared log


def test_a_good_challenger_is_promoted_through_every_step(workers, fast_canary):
    settings, store = fast_canary
    record, _ = _rollout(workers, settings, VariantSpec("v2", 7))
    assert record["outcome"] == "promoted", record["reason"]
    assert [step["share"] for step in record["steps"]] == [0.05, 0.25, 0.5, 1.0]
    assert store.current_id() == "v2"
    workers[0].sync()
    assert workers[0].routing.variants["control"] == VariantSpec()  # control follows the published again
    time.sleep(0)


def test_an_interleaved_experiment_serves_one_page_from_both_arms(workers):
    from skulens.serving.feedback import ServiceEvents

    one, two = workers
    one.start_experiment({"name": "mix", "method": "interleave",
                          "arms": {"control": {"share": 0.0}, "b": {"share": 1.0, "reranker_version": 5}}})
    two.sync()
    body = two.search(SearchRequest.parse({"text": "red shirt", "k": 6, "user_id": "u9"}, two.config))
    assert body["variant"] == "interleaved" and body["versions"]["interleaved_with"] == "b"
    assert {item["team"] for item in body["items"]} <= {"control", "b"} and len(body["items"]) == 6
    events = ServiceEvents(None, two.metrics)
    search_id = events.record_search("/search", body, query_raw="red shirt", user_id="u9", session_id=None,
                                     latency_ms=1.0)
    assert ".il." in search_id and "_id_suffix" not in body  # the teams ride in the id, not the response


def test_a_challenger_no_worker_can_load_is_rolled_back_before_it_takes_traffic(workers, fast_canary):
    settings, store = fast_canary
    (store.versions / "unloadable").mkdir()
    record, counts = _rollout(workers, settings, VariantSpec("unloadable"))
    assert record["outcome"] == "rolled_back" and "failed to load in" in record["reason"]
    assert "products.parquet" in record["reason"] and record["steps"] == [] and counts.get("canary", 0) == 0
    assert store.current_id() == "v2"  # untouched: the challenger was never published
