"""Learning to rank from clicks: position propensities from randomised swaps, then inverse-propensity
weighted LambdaMART (LightGBM), evaluated on held-out logged days and held-out real judged queries.

**Data.** The stream job's events table: every ``impression`` row carries the per-stage scores the
result was shown with (online features included), its position and its search; a ``click`` on
the same search and product is the label. Only first-page text searches of ``/search`` count.

**Propensities.** A share of first pages (``serving.exploration_share``) swap result 1 with a
random result k in 2..10, flagged ``swap:1:k`` in the search record. Since the swap is random, the
click rate at position k of the result that would have been first, divided by the click rate at
position 1 on unswapped pages, estimates the examination propensity ratio p(k)/p(1) (Joachims et
al., 2017, "swap intervention"). A power law p(k) = k^-eta is fitted to the ratios (weighted by
the searches behind each); with fewer than ``min_explored`` swapped searches eta stays at 1 and
the result says so.

**Training.** LightGBM's ``lambdarank`` on the features of :mod:`skulens.models.ranker`, one group
per search, each clicked result weighted by 1 / p(its position) (clipped at ``max_weight``): the
inverse-propensity-weighted LambdaMART of Wang et al. (2016) and Joachims et al. (2017).

**Evaluation.** On the held-out (latest) days: the IPS estimate of clicks per search of the new
order, sum over clicked results of p(new rank) / p(logged rank), against the logged policy (the
observed clicks) and the current champion ranker's estimate on the same searches. On held-out real
judged queries of the catalogue (when it has judgments and a published index): nDCG@10 of the
served pipeline's order with and without the ranker.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skulens.models.ranker import FEATURES, LearnedRanker, ranker_features


@dataclass(frozen=True)
class RankerConfig:
    depth: int = 10               # results the served ranker reorders: the first page it was trained on
    held_out_days: int = 1        # the latest days of the log are the test set
    min_explored: int = 200       # swapped searches needed to estimate propensities
    max_weight: float = 10.0      # clip of 1 / propensity
    n_estimators: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_child_samples: int = 20
    seed: int = 13


@dataclass
class Propensities:
    eta: float
    ratios: dict[int, float] = field(default_factory=dict)
    searches: dict[int, int] = field(default_factory=dict)
    method: str = ""

    def at(self, position: np.ndarray | float) -> np.ndarray:
        return np.power(np.maximum(np.asarray(position, dtype=np.float64), 1.0), -self.eta)

    def to_dict(self) -> dict[str, Any]:
        return {"eta": round(self.eta, 4), "ratios": {str(k): round(v, 4) for k, v in self.ratios.items()},
                "searches": {str(k): v for k, v in self.searches.items()}, "method": self.method}


def read_logged(events_folder: Path, catalog: str | None = None) -> pd.DataFrame:
    """Impressions of first-page ``/search`` text searches with their click label (0/1), one row per
    shown result, sorted by search and position."""
    import pyarrow.dataset as ds

    files = sorted(Path(events_folder).glob("date=*/batch_id=*/*.parquet"))
    if not files:
        return pd.DataFrame(columns=["search_id", "ts", "product_id", "position", "scores", "query", "catalog",
                                     "exploration", "clicked"])
    table = ds.dataset(files, format="parquet").to_table(
        columns=["search_id", "ts", "event_type", "product_id", "position", "scores", "query", "catalog",
                 "endpoint", "exploration", "orphaned"]).to_pandas()
    shown = table[(table["event_type"] == "impression") & (table["endpoint"] == "/search") & table["query"].notna()]
    if catalog is not None:
        shown = shown[shown["catalog"] == catalog]
    clicks = table[(table["event_type"] == "click") & ~table["orphaned"].fillna(False).astype(bool)]
    clicked = set(zip(clicks["search_id"], clicks["product_id"], strict=True))
    shown = shown.assign(clicked=[int((s, p) in clicked) for s, p in zip(shown["search_id"], shown["product_id"],
                                                                          strict=True)])
    return shown.sort_values(["search_id", "position"]).reset_index(drop=True)


def estimate_propensities(logged: pd.DataFrame, min_explored: int = 200, top: int = 10) -> Propensities:
    """p(k) = k^-eta from the swap interventions in ``logged`` (see the module docstring)."""
    swap = logged["exploration"].fillna("").str.extract(r"^swap:1:(\d+)$")[0]
    logged = logged.assign(_swap=pd.to_numeric(swap, errors="coerce"))
    plain = logged[logged["_swap"].isna()]
    searches_plain = plain["search_id"].nunique()
    first = plain[plain["position"] == 1]["clicked"].sum() / max(searches_plain, 1)
    explored = logged[logged["_swap"].notna()]
    counts = explored.groupby("_swap")["search_id"].nunique()
    if explored["search_id"].nunique() < min_explored or first <= 0:
        return Propensities(1.0, method=f"default eta = 1: {explored['search_id'].nunique()} swapped searches "
                                        f"(fewer than {min_explored}) or no clicks at position 1")
    ratios, searches = {}, {}
    for k, n in counts.items():
        k = int(k)
        if not 2 <= k <= top:
            continue
        at_k = explored[(explored["_swap"] == k) & (explored["position"] == k)]["clicked"].sum() / n
        if at_k > 0:
            ratios[k], searches[k] = float(at_k / first), int(n)
    if len(ratios) < 2:
        return Propensities(1.0, ratios, searches, "default eta = 1: too few positions with clicks after a swap")
    x = np.log(np.array(list(ratios)))
    y = np.log(np.array(list(ratios.values())))
    w = np.array(list(searches.values()), dtype=np.float64)
    eta = float(-(w * x * y).sum() / (w * x * x).sum())  # weighted least squares through the origin
    return Propensities(min(max(eta, 0.0), 3.0), ratios, searches,
                        f"swap interventions: {int(w.sum())} swapped searches, {searches_plain} plain")


def feature_matrix(logged: pd.DataFrame, titles: Mapping[str, str], paths: Mapping[str, list[str]]
                   ) -> tuple[np.ndarray, list[int]]:
    """Features (rows in ``logged`` order) and the group sizes (one group per search)."""
    blocks, groups = [], []
    for (_, query), search in logged.groupby(["search_id", "query"], sort=False):
        scores = [json.loads(s) if isinstance(s, str) else {} for s in search["scores"]]
        ids = list(search["product_id"])
        blocks.append(ranker_features(query, scores, [titles.get(p) for p in ids], [paths.get(p) for p in ids]))
        groups.append(len(search))
    return (np.vstack(blocks) if blocks else np.zeros((0, len(FEATURES)))), groups


def split_by_day(logged: pd.DataFrame, held_out_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): the test set is the latest ``held_out_days`` days of searches."""
    days = pd.to_datetime(logged["ts"], utc=True).dt.floor("D")
    cut = days.max() - pd.Timedelta(days=held_out_days - 1)
    return logged[days < cut], logged[days >= cut]


def fit(train: pd.DataFrame, titles: Mapping[str, str], paths: Mapping[str, list[str]], propensities: Propensities,
        config: RankerConfig, init_model: LearnedRanker | None = None) -> LearnedRanker:
    """IPS-weighted LambdaMART on the searches of ``train`` that have at least one click
    (``init_model``: continue its trees with a sixth of the rounds, an incremental update)."""
    import lightgbm

    useful = train[train.groupby("search_id")["clicked"].transform("sum") > 0]
    if useful.empty:
        raise ValueError("no search with a click to learn from")
    features, groups = feature_matrix(useful, titles, paths)
    weights = np.where(useful["clicked"].to_numpy() == 1,
                       np.minimum(1.0 / propensities.at(useful["position"].to_numpy()), config.max_weight), 1.0)
    data = lightgbm.Dataset(features, label=useful["clicked"].to_numpy(), group=groups, weight=weights,
                            feature_name=list(FEATURES), free_raw_data=False)
    params = {"objective": "lambdarank", "metric": "ndcg", "ndcg_eval_at": [10], "learning_rate": config.learning_rate,
              "num_leaves": config.num_leaves, "min_data_in_leaf": config.min_child_samples, "seed": config.seed,
              "deterministic": True, "num_threads": 2, "verbosity": -1, "lambdarank_truncation_level": 20}
    rounds = config.n_estimators if init_model is None else max(10, config.n_estimators // 6)
    booster = lightgbm.train(params, data, num_boost_round=rounds,
                             init_model=init_model.booster if init_model is not None else None)
    meta = {"features": list(FEATURES), "depth": config.depth, "propensities": propensities.to_dict(),
            "trained_on": {"searches": len(groups), "rows": len(useful), "clicks": int(useful["clicked"].sum())}}
    return LearnedRanker(booster, meta)


def ips_clicks_per_search(test: pd.DataFrame, order: Any, propensities: Propensities, clip: float = 10.0) -> float:
    """Estimated clicks per search if ``order(search_frame) -> new positions`` had ranked the logged
    results: sum over clicked results of p(new) / p(logged), each term clipped at ``clip``."""
    total, searches = 0.0, 0
    for _, search in test.groupby("search_id", sort=False):
        searches += 1
        if not search["clicked"].any():
            continue
        new_positions = order(search)
        clicked = search["clicked"].to_numpy() == 1
        ratio = propensities.at(new_positions[clicked]) / propensities.at(search["position"].to_numpy()[clicked])
        total += float(np.minimum(ratio, clip).sum())
    return total / max(searches, 1)


def positions_by(ranker: LearnedRanker, titles: Mapping[str, str], paths: Mapping[str, list[str]]) -> Any:
    """``order`` for :func:`ips_clicks_per_search`: the positions ``ranker`` gives a logged page."""
    def order(search: pd.DataFrame) -> np.ndarray:
        scores = [json.loads(s) if isinstance(s, str) else {} for s in search["scores"]]
        ids = list(search["product_id"])
        ranked = ranker.order(search["query"].iloc[0], scores, [titles.get(p) for p in ids],
                              [paths.get(p) for p in ids])
        positions = np.empty(len(ids))
        positions[ranked] = np.arange(1, len(ids) + 1)
        return positions
    return order


def ndcg_at_10(ranked: list[str], grades: Mapping[str, float]) -> float:
    """nDCG@10 with gains 2^grade - 1 (grades as the judgments give them, 0 when unjudged)."""
    def dcg(values: list[float]) -> float:
        return sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(values[:10]))

    ideal = dcg(sorted(grades.values(), reverse=True))
    return dcg([grades.get(p, 0.0) for p in ranked]) / ideal if ideal > 0 else 0.0
