"""The ``train_ranker`` pipeline: learn the ranker from the logged searches and clicks, evaluate it on
held-out days (IPS) and held-out real judged queries, register it as ``challenger`` of
``skulens-ranker`` and promote it to ``champion`` only through its gate (``models.gate.ranker``).

The service loads the ranker's champion by alias (``serving.ranker``): a promotion POSTs
``/admin/reload`` to ``retrieval.reload_url`` when that is set, else the next reload or start picks
it up. Full runs train from scratch on every logged day but the held-out ones;
incremental runs (``incremental=True``, the hourly DAG) continue the champion's trees on the last
day's searches, and pass the same gate.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skulens.settings import Settings

PIPELINE = "train_ranker"


def _catalogue(settings: Settings, catalog: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Titles and category paths (the word features); empty for a catalogue with no tables, whose
    ranker then learns from the scores alone."""
    from skulens.data.catalog import read_table

    try:
        table = read_table(settings, catalog, "products")
    except FileNotFoundError:
        return {}, {}
    products = table.select(["product_id", "title", "category_path"]).to_pylist()
    return ({r["product_id"]: r["title"] for r in products},
            {r["product_id"]: list(r["category_path"] or []) for r in products})


def judged_gain(settings: Settings, catalog: str, ranker: Any, limit: int = 300) -> dict[str, float] | None:
    """nDCG@10 on held-out real judged queries of the served pipeline (its published index, with the
    online features as the service sees them) without and with ``ranker``; None when the catalogue
    has no published index or no judgments."""
    from skulens.data.catalog import read_table
    from skulens.evaluation.harness import load_served_for_eval
    from skulens.evaluation.ranking import ranking_queries
    from skulens.serving.pipeline import SearchRequest
    from skulens.streaming.online import FeatureCache, open_store
    from skulens.training.ranker import ndcg_at_10

    try:
        pipeline = load_served_for_eval(settings, catalog)
    except (FileNotFoundError, LookupError):
        return None
    found = ranking_queries(settings, catalog, read_table(settings, catalog, "products"), split="test", limit=limit)
    if found is None or "judgments" not in found[2]:
        return None
    texts, qrels, _ = found
    pipeline.ranker = None  # the order without any learned ranker: the baseline
    cache = FeatureCache(lambda: open_store(settings))
    cache.refresh()
    pipeline.features = cache
    base, learned = [], []
    for qid, text in texts.items():
        result = pipeline.search(SearchRequest.parse({"text": text, "k": max(ranker.depth, 10)}, pipeline.config))
        ids = [item["product_id"] for item in result.items]
        grades = {pid: float(g) for pid, g in qrels[qid].items()}
        base.append(ndcg_at_10(ids, grades))
        head = ids[:ranker.depth]
        order = ranker.order(result.query, [item["scores"] for item in result.items[:ranker.depth]],
                             [pipeline.titles.get(p) for p in head], [pipeline.paths.get(p) for p in head])
        learned.append(ndcg_at_10([head[i] for i in order] + ids[len(head):], grades))
    pipeline.close()
    cache.close()
    return {"test_judged_nDCG@10": float(np.mean(learned)), "baseline_no_ranker_judged_nDCG@10": float(np.mean(base)),
            "test_judged_nDCG@10_gain": float(np.mean(learned) - np.mean(base)), "judged_queries": float(len(texts))}


def train_ranker(settings: Settings, run_id: str, catalog: str | None = None, *, incremental: bool = False,
                 config: Any = None, held_out_since: Any = None) -> dict[str, Any]:
    """Train, evaluate, register and gate one ranker version; the summary (also written to
    ``SKULENS_HOME/reports/train_ranker/<run_id>.json``). The searches logged since
    ``held_out_since`` (a datetime; default: the latest ``held_out_days`` calendar days) are the
    held-out test set."""
    from skulens.serving.loader import champion_ranker
    from skulens.storage.layout import stream_paths
    from skulens.tracking.registry import log_and_register, promote_if_better
    from skulens.training.ranker import (
        RankerConfig,
        estimate_propensities,
        fit,
        ips_clicks_per_search,
        positions_by,
        read_logged,
        split_by_day,
    )

    started = time.perf_counter()
    config = config or RankerConfig()
    catalog = catalog or settings.retrieval.catalog
    logged = read_logged(stream_paths(settings).events, catalog)
    if logged.empty:
        raise FileNotFoundError(f"no logged /search impressions of catalogue {catalog!r} in the events table; "
                                "serve searches and run the stream job (refresh_features) first")
    if held_out_since is not None:
        since = pd.Timestamp(held_out_since)
        train, test = logged[logged["ts"] < since], logged[logged["ts"] >= since]
    else:
        train, test = split_by_day(logged, config.held_out_days)
    if train.empty or test.empty:
        raise ValueError(f"the log spans {logged['ts'].dt.floor('D').nunique()} day(s); training holds out the "
                         f"latest {config.held_out_days} and needs at least one more")
    champion, champion_label = champion_ranker(settings)
    if incremental and champion is not None:
        train = train[train["ts"] >= train["ts"].max() - pd.Timedelta(days=1)]
    titles, paths = _catalogue(settings, catalog)
    propensities = estimate_propensities(train, config.min_explored)
    ranker = fit(train, titles, paths, propensities, config,
                 init_model=champion if incremental else None)
    identity = lambda search: search["position"].to_numpy(dtype=np.float64)  # noqa: E731 - the logged order
    metrics = {
        "test_ips_clicks_per_search": ips_clicks_per_search(test, positions_by(ranker, titles, paths), propensities),
        "baseline_logged_clicks_per_search": ips_clicks_per_search(test, identity, propensities),
        "test_searches": float(test["search_id"].nunique()),
        "train_searches": float(train["search_id"].nunique()),
        "propensity_eta": propensities.eta,
    }
    metrics["baseline_champion_ips_clicks_per_search"] = (
        ips_clicks_per_search(test, positions_by(champion, titles, paths), propensities) if champion is not None
        else metrics["baseline_logged_clicks_per_search"])
    judged = judged_gain(settings, catalog, ranker)
    if judged is not None:
        metrics.update(judged)
    folder = ranker.save(settings.home / "cache" / "rankers" / run_id / "model")  # MLflow keeps the folder name
    card = _card(catalog, propensities, metrics, ranker, champion_label, incremental, judged is not None)
    registered = log_and_register(
        settings, kind="ranker", run_name=f"ranker-{run_id}",
        params={"catalog": catalog, "incremental": incremental, **asdict(config)}, history=[],
        final_metrics=metrics, artifacts={"model": str(folder)}, card=card,
        tags={"skulens.pipeline": PIPELINE, "skulens.clicks": "simulated or real: see the events' origin"})
    decision = promote_if_better(settings, "ranker", registered["version"])
    reload = None
    if decision.promoted and settings.retrieval.reload_url:
        from skulens.pipelines.build_index import post_reload

        reload = post_reload(settings, None)  # the service loads the new champion by its alias
    summary = {"serving_reload": reload, "run_id": run_id, "catalog": catalog, "incremental": incremental,
               "metrics": metrics,
               "propensities": propensities.to_dict(), "registered": registered["version"],
               "gate": decision.to_dict(), "seconds": round(time.perf_counter() - started, 1)}
    _report(settings, run_id, summary)
    return summary


def _card(catalog: str, propensities: Any, metrics: dict[str, float], ranker: Any, champion: str,
          incremental: bool, judged: bool) -> str:
    from skulens.tracking.registry import model_card

    notes = [f"propensities: {propensities.method}; eta {propensities.eta:.3f}",
             f"previous champion: {champion}", "incremental (continued the champion's trees)" if incremental
             else "trained from scratch"]
    if not judged:
        notes.append("no held-out judged queries for this catalogue (no judgments or no published index): "
                     "the judged-query rule of the gate cannot pass")
    return model_card(f"skulens ranker ({catalog})", data=ranker.meta["trained_on"], metrics=metrics,
                      config={"depth": ranker.depth, "features": ranker.meta["features"]}, notes=notes)


def _report(settings: Settings, run_id: str, summary: dict[str, Any]) -> Path:
    folder = settings.reports_dir / PIPELINE
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_id}.json"
    path.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    (folder / "latest.json").write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    return path
