"""Learning to rank from clicks on a synthetic, position-biased log whose truth is known: the swap
estimate recovers the examination curve, IPS-weighted LambdaMART learns the relevant feature the
logged order ignored, the IPS estimate agrees, and the served pipeline applies the ranker (and the
exploration swap) as a stage."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from skulens.models.ranker import FEATURES, LearnedRanker, ranker_features
from skulens.training.ranker import (
    Propensities,
    RankerConfig,
    estimate_propensities,
    fit,
    ips_clicks_per_search,
    positions_by,
    split_by_day,
)
from tests.unit.test_serving_pipeline import parts  # noqa: F401 - the fixture

ETA = 1.0  # the simulated shoppers examine position k with probability k^-1


def synthetic_log(searches: int = 6000, explore: float = 0.2, seed: int = 3) -> tuple[pd.DataFrame, dict]:
    """Logged order by a weak score (bm25); the truth follows a strong one (rerank)."""
    rng = np.random.default_rng(seed)
    relevance = {f"p{i}": float(rng.uniform()) for i in range(300)}
    rows = []
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for s in range(searches):
        ids = list(rng.choice(300, size=10, replace=False))
        ids = [f"p{i}" for i in ids]
        true = np.array([relevance[p] for p in ids])
        bm25 = true + rng.normal(0, 0.6, size=10)
        rerank = true + rng.normal(0, 0.05, size=10)
        order = list(np.argsort(-bm25))
        exploration = None
        if rng.uniform() < explore:
            k = int(rng.integers(2, 11))
            order[0], order[k - 1] = order[k - 1], order[0]
            exploration = f"swap:1:{k}"
        ts = start + timedelta(seconds=int(s * 3 * 86400 / searches))
        for position, i in enumerate(order, start=1):
            examined = rng.uniform() < position ** -ETA
            clicked = examined and rng.uniform() < 0.05 + 0.85 * true[i] ** 2
            rows.append({"search_id": f"s{s}", "ts": ts, "product_id": ids[i], "position": position,
                         "scores": json.dumps({"bm25": float(bm25[i]), "rerank": float(rerank[i])}),
                         "query": "q", "catalog": "c", "exploration": exploration, "clicked": int(clicked)})
    return pd.DataFrame(rows), relevance


@pytest.fixture(scope="module")
def log():
    return synthetic_log()


def test_the_swap_interventions_recover_the_examination_curve(log):
    logged, _ = log
    found = estimate_propensities(logged, min_explored=200)
    assert found.method.startswith("swap interventions")
    assert found.eta == pytest.approx(ETA, abs=0.2)
    few = estimate_propensities(logged[~logged["search_id"].isin(logged[logged["exploration"].notna()]["search_id"]
                                                                  .unique()[50:])], min_explored=200)
    assert few.eta == 1.0 and few.method.startswith("default")  # too few swaps: says so


def _top1_relevance(test: pd.DataFrame, order, relevance: dict) -> float:
    firsts = []
    for _, search in test.groupby("search_id"):
        positions = order(search)
        firsts.append(relevance[search["product_id"].to_numpy()[np.argmin(positions)]])
    return float(np.mean(firsts))


def test_ips_lambdamart_learns_what_the_logged_order_missed(log):
    logged, relevance = log
    train, test = split_by_day(logged, held_out_days=1)
    assert not train.empty and not test.empty and test["ts"].min() > train["ts"].max()
    propensities = estimate_propensities(train)
    ranker = fit(train, {}, {}, propensities, RankerConfig(n_estimators=120))
    learned = positions_by(ranker, {}, {})
    logged_order = lambda search: search["position"].to_numpy(dtype=float)  # noqa: E731
    # The truth: the learned first result is far more relevant than the logged one.
    assert _top1_relevance(test, learned, relevance) > _top1_relevance(test, logged_order, relevance) + 0.15
    # And the IPS estimate of clicks sees it from the logs alone.
    assert ips_clicks_per_search(test, learned, propensities) > 1.2 * ips_clicks_per_search(test, logged_order,
                                                                                           propensities)


def test_the_ranker_round_trips_and_refuses_features_it_was_not_trained_on(log, tmp_path):
    logged, _ = log
    ranker = fit(logged, {}, {}, Propensities(1.0), RankerConfig(n_estimators=10))
    folder = ranker.save(tmp_path / "r")
    again = LearnedRanker.load(folder)
    features = ranker_features("q", [{"bm25": 1.0, "rerank": 0.2}, {"bm25": 0.5, "rerank": 0.9}], [None, None],
                               [None, None])
    assert np.allclose(again.score(features), ranker.score(features))
    meta = json.loads((folder / "ranker.json").read_text())
    (folder / "ranker.json").write_text(json.dumps({**meta, "features": ["bm25"]}))
    with pytest.raises(ValueError, match="retrain"):
        LearnedRanker.load(folder)


def test_features_rank_within_the_search_and_read_words():
    rows = ranker_features("red cotton shirt", [{"bm25": 2.0, "ctr_prior": 0.1, "popularity_7d": 3.0},
                                                {"bm25": 5.0, "dense": 0.4}],
                           ["Red Shirt", "Blue jeans"], [["Apparel", "Shirts"], ["Apparel", "Jeans"]])
    column = {name: i for i, name in enumerate(FEATURES)}
    assert list(rows[:, column["rank_bm25"]]) == [2.0, 1.0]
    assert np.isnan(rows[0, column["rank_dense"]]) and rows[1, column["rank_dense"]] == 1.0
    assert rows[0, column["title_overlap"]] == pytest.approx(2 / 3) and rows[1, column["title_overlap"]] == 0.0
    assert list(rows[:, column["category_match"]]) == [1.0, 0.0]
    assert rows[0, column["log_popularity_7d"]] == pytest.approx(np.log1p(3.0))
    assert np.isnan(rows[1, column["ctr_prior"]])  # no events: missing, not zero


class Reverser:
    """A ranker that puts the retrieval order upside down (its effect is unmistakable)."""

    depth = 5

    def order(self, query, scores, titles, categories):
        assert len(scores) == len(titles) == len(categories) <= self.depth
        return list(range(len(scores)))[::-1]


class Broken:
    depth = 5

    def order(self, *args):
        raise RuntimeError("model file unreadable")


def test_the_pipeline_applies_the_ranker_as_its_last_ranking_stage(parts):  # noqa: F811
    from skulens.serving.pipeline import SearchPipeline, SearchRequest, ServingConfig

    config = ServingConfig(collapse_threshold=None)
    plain = SearchPipeline(**parts, config=config)
    ranked = SearchPipeline(**parts, config=config, ranker=Reverser())
    request = SearchRequest.parse({"text": "red shirt", "k": 8}, config)
    before = [i["product_id"] for i in plain.search(request).items]
    result = ranked.search(request)
    after = [i["product_id"] for i in result.items]
    assert after[:5] == before[:5][::-1] and after[5:] == before[5:]
    assert ("ltr", "ok") in [(s.name, s.status) for s in result.stages]
    failing = SearchPipeline(**parts, config=config, ranker=Broken()).search(request)
    assert [i["product_id"] for i in failing.items] == before and "ranker_skipped" in failing.fallbacks


def test_exploration_swaps_result_one_with_a_later_one_and_says_so(parts):  # noqa: F811
    from skulens.serving.pipeline import SearchPipeline, SearchRequest, ServingConfig

    plain = SearchPipeline(**parts, config=ServingConfig(collapse_threshold=None))
    always = SearchPipeline(**parts, config=ServingConfig(collapse_threshold=None, exploration_share=0.5))
    request = SearchRequest.parse({"text": "red shirt", "k": 8}, plain.config)
    before = [i["product_id"] for i in plain.search(request).items]
    seen = set()
    for _ in range(60):
        result = always.search(request)
        after = [i["product_id"] for i in result.items]
        if result.exploration is None:
            assert after == before
            continue
        k = int(result.exploration.split(":")[2])
        seen.add(k)
        assert after[0] == before[k - 1] and after[k - 1] == before[0] and sorted(after) == sorted(before)
    assert len(seen) >= 3 and seen <= set(range(2, 9))
    second_page = always.search(SearchRequest.parse({"text": "red shirt", "k": 4, "page": 2}, plain.config))
    assert second_page.exploration is None
