"""A/B experiment analysis: what each arm did for the shoppers bucketed into it, and whether the
difference is real.

The unit is the shopper (user id, or session id for anonymous shoppers): bucketing is per shopper,
so their searches are not independent and every interval here is computed over shoppers.

* CTR (clicks per search) and the zero-result rate are **ratio metrics**: their variance comes from
  the delta method over per-shopper sums; carts and purchases are **per shopper** means;
* **lift** of each arm over control is relative, with a 95% interval from the delta method on the
  log ratio (two independent arms) and a two-sided p-value on the absolute difference;
* the **sample-ratio-mismatch** check compares shoppers per arm with the declared shares
  (chi-square; flagged below p = 0.001: the bucketing or the logging is broken, do not trust the
  lifts);
* **shoppers still needed** per arm to detect ``mde`` relative CTR lift at alpha 0.05, power 0.8.

:func:`read_exposures` reads the experiment's searches and actions from the stream job's events
table (the experiment name travels in each search record's ``versions``).
:func:`simulate_exposures` makes **simulated** shoppers for tests and benchmarks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

Z95, Z_POWER = 1.959963984540054, 0.8416212335729143
SRM_P = 0.001


@dataclass(frozen=True)
class Ratio:
    value: float
    variance: float  # of the estimate


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> Ratio:
    """sum(num)/sum(den) over shoppers with its delta-method variance."""
    n = len(numerator)
    if n < 2 or denominator.sum() == 0:
        return Ratio(float("nan"), float("nan"))
    mx, my = numerator.mean(), denominator.mean()
    vx, vy = numerator.var(ddof=1), denominator.var(ddof=1)
    cxy = np.cov(numerator, denominator, ddof=1)[0, 1]
    r = mx / my
    variance = (vx - 2 * r * cxy + r * r * vy) / (my * my * n)
    return Ratio(float(r), float(max(variance, 0.0)))


def lift(arm: Ratio, control: Ratio) -> dict[str, float | None]:
    """Relative lift of ``arm`` over ``control``, its 95% interval and a two-sided p-value."""
    if not (arm.value > 0 and control.value > 0) or math.isnan(arm.variance + control.variance):
        return {"lift": None, "ci_low": None, "ci_high": None, "p_value": None}
    log_se = math.sqrt(arm.variance / arm.value**2 + control.variance / control.value**2)
    log_lift = math.log(arm.value / control.value)
    se = math.sqrt(arm.variance + control.variance)
    p = 2 * stats.norm.sf(abs(arm.value - control.value) / se) if se > 0 else 1.0
    return {"lift": math.exp(log_lift) - 1, "ci_low": math.exp(log_lift - Z95 * log_se) - 1,
            "ci_high": math.exp(log_lift + Z95 * log_se) - 1, "p_value": float(p)}


def srm(users: dict[str, int], shares: dict[str, float]) -> dict[str, Any]:
    """Chi-square of shoppers per arm against the declared shares."""
    arms = [a for a in shares if shares[a] > 0]
    observed = np.array([users.get(a, 0) for a in arms], dtype=float)
    total = observed.sum()
    if total == 0 or len(arms) < 2:
        return {"p_value": None, "mismatch": False, "observed": users, "expected_shares": shares}
    expected = np.array([shares[a] for a in arms]) / sum(shares[a] for a in arms) * total
    p = float(stats.chisquare(observed, expected).pvalue)
    return {"p_value": p, "mismatch": p < SRM_P, "observed": {a: int(o) for a, o in zip(arms, observed, strict=True)},
            "expected": {a: round(float(e), 1) for a, e in zip(arms, expected, strict=True)}}


def needed_per_arm(per_user: pd.DataFrame, mde: float) -> int | None:
    """Shoppers per arm to detect a relative CTR change of ``mde`` (alpha 0.05 two-sided, power 0.8),
    from control's per-shopper variance of the linearised CTR."""
    control = per_user[per_user["arm"] == "control"]
    if len(control) < 2 or control["searches"].sum() == 0:
        return None
    r = control["clicks"].sum() / control["searches"].sum()
    linear = (control["clicks"] - r * control["searches"]) / control["searches"].mean()
    sigma2 = float(linear.var(ddof=1))
    delta = mde * r
    return math.ceil(2 * (Z95 + Z_POWER) ** 2 * sigma2 / (delta * delta)) if delta > 0 else None


def analyse(per_user: pd.DataFrame, shares: dict[str, float], latencies: dict[str, list[float]] | None = None,
            mde: float = 0.02) -> dict[str, Any]:
    """The report of one experiment from per-shopper sums (columns ``arm, unit, searches, clicks,
    carts, purchases, zero_results``) and each arm's search latencies (ms)."""
    arms: dict[str, Any] = {}
    ratios: dict[str, dict[str, Ratio]] = {}
    for arm, rows in per_user.groupby("arm"):
        searches = rows["searches"].to_numpy(float)
        ones = np.ones(len(rows))
        ratios[arm] = {"ctr": ratio(rows["clicks"].to_numpy(float), searches),
                       "zero_result_rate": ratio(rows["zero_results"].to_numpy(float), searches),
                       "carts_per_user": ratio(rows["carts"].to_numpy(float), ones),
                       "purchases_per_user": ratio(rows["purchases"].to_numpy(float), ones)}
        lat = (latencies or {}).get(arm) or []
        arms[arm] = {"users": len(rows), "searches": int(searches.sum()),
                     **{name: _round(r.value) for name, r in ratios[arm].items()},
                     "p95_ms": round(float(np.percentile(lat, 95)), 1) if lat else None}
    if "control" in ratios:
        for arm in arms:
            if arm != "control":
                arms[arm]["lift"] = {name: {k: _round(v) for k, v in lift(ratios[arm][name],
                                                                          ratios["control"][name]).items()}
                                     for name in ratios[arm]}
    needed = needed_per_arm(per_user, mde)
    smallest = min((a["users"] for a in arms.values()), default=0)
    return {"arms": arms, "srm": srm({a: v["users"] for a, v in arms.items()}, shares),
            "mde": mde, "users_needed_per_arm": needed,
            "users_still_needed_per_arm": None if needed is None else max(needed - smallest, 0)}


def _round(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 6)


def per_user_from_events(events: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[float]]]:
    """Per-shopper sums and per-arm latencies from events-table rows of one experiment."""
    events = events.assign(unit=events["user_id"].fillna(events["session_id"]).fillna("anonymous"),
                           arm=events["variant"].fillna("control"))
    searches = events[events["event_type"] == "search"]
    kinds = {"searches": searches.assign(n=1), "zero_results": searches.assign(n=(searches["results"] == 0) * 1)}
    for kind, event in (("clicks", "click"), ("carts", "add_to_cart"), ("purchases", "purchase")):
        kinds[kind] = events[events["event_type"] == event].assign(n=1)
    frames = [rows.groupby(["arm", "unit"])["n"].sum().rename(kind) for kind, rows in kinds.items()]
    per_user = pd.concat(frames, axis=1).fillna(0).reset_index()
    per_user = per_user[per_user["searches"] > 0]
    latencies = {arm: rows["latency_ms"].dropna().tolist() for arm, rows in searches.groupby("arm")}
    return per_user, latencies


def read_exposures(events_dir: Path, experiment: str) -> pd.DataFrame:
    """The events-table rows (searches and the actions joined to them) of ``experiment``."""
    import duckdb

    pattern = str(Path(events_dir) / "**" / "*.parquet")
    if not any(Path(events_dir).rglob("*.parquet")):
        return pd.DataFrame(columns=["event_type", "user_id", "session_id", "variant", "results", "latency_ms"])
    query = ("select event_type, user_id, session_id, variant, results, latency_ms from read_parquet(?, "
             "hive_partitioning = true, union_by_name = true) where json_extract_string(versions, '$.experiment') = ?")
    with duckdb.connect() as db:
        return db.execute(query, [pattern, experiment]).df()


def simulate_exposures(users: int, shares: dict[str, float], ctr: dict[str, float], *, salt: str = "sim",
                       seed: int = 0, searches_mean: float = 3.0, purchase_rate: float = 0.05) -> pd.DataFrame:
    """**Simulated** shoppers bucketed by the service's own assignment, each with a Poisson number of
    searches and a per-arm click probability: per-shopper sums for :func:`analyse`."""
    from skulens.control.routing import assign

    rng = np.random.default_rng(seed)
    units = [f"sim-user-{seed}-{i}" for i in range(users)]
    arms = [assign(unit, shares, salt) for unit in units]
    searches = rng.poisson(searches_mean, users) + 1
    p = np.array([ctr[a] for a in arms])
    clicks = rng.binomial(searches, p)
    carts = rng.binomial(clicks, 0.3)
    return pd.DataFrame({"arm": arms, "unit": units, "searches": searches, "clicks": clicks, "carts": carts,
                         "purchases": rng.binomial(carts, purchase_rate * 4),
                         "zero_results": rng.binomial(searches, 0.04)})


def interleaving(clicks: pd.DataFrame) -> dict[str, Any]:
    """Team-draft interleaving from the click rows (``search_id``, ``position``) of interleaved
    searches: per search, the arm whose results got more clicks wins; the challenger's preference
    is its share of the searches either arm won, with a Wilson 95% interval and an exact binomial
    test against 0.5 (no preference)."""
    from skulens.control.routing import team_of

    teams = clicks.assign(team=[team_of(str(sid), int(pos or 0)) for sid, pos in
                                zip(clicks["search_id"], clicks["position"], strict=True)]).dropna(subset=["team"])
    per_search = teams.groupby(["search_id", "team"]).size().unstack(fill_value=0)
    for team in ("control", "challenger"):
        if team not in per_search:
            per_search[team] = 0
    wins = int((per_search["challenger"] > per_search["control"]).sum())
    losses = int((per_search["challenger"] < per_search["control"]).sum())
    ties = int((per_search["challenger"] == per_search["control"]).sum())
    decided = wins + losses
    if not decided:
        return {"searches_with_clicks": len(per_search), "wins": 0, "losses": 0, "ties": ties, "preference": None}
    share = wins / decided
    centre = (share + Z95**2 / (2 * decided)) / (1 + Z95**2 / decided)
    half = Z95 * math.sqrt(share * (1 - share) / decided + Z95**2 / (4 * decided**2)) / (1 + Z95**2 / decided)
    return {"searches_with_clicks": len(per_search), "wins": wins, "losses": losses, "ties": ties,
            "preference": round(share, 4), "ci_low": round(centre - half, 4), "ci_high": round(centre + half, 4),
            "p_value": float(stats.binomtest(wins, decided, 0.5).pvalue)}


def read_interleaved_clicks(events_dir: Path, experiment: str) -> pd.DataFrame:
    """Click rows of ``experiment``'s interleaved searches (their search id carries the teams)."""
    import duckdb

    if not any(Path(events_dir).rglob("*.parquet")):
        return pd.DataFrame(columns=["search_id", "position"])
    query = ("select search_id, position from read_parquet(?, hive_partitioning = true, union_by_name = true) "
             "where event_type = 'click' and search_id like '%.il.%' "
             "and json_extract_string(versions, '$.experiment') = ?")
    with duckdb.connect() as db:
        return db.execute(query, [str(Path(events_dir) / "**" / "*.parquet"), experiment]).df()


def format_report(name: str, report: dict[str, Any]) -> str:
    """The report as the CLI prints it."""
    lines = [f"experiment {name}"]
    for arm, row in sorted(report["arms"].items()):
        lines.append(f"  {arm:<10} users {row['users']:>7,}  searches {row['searches']:>8,}  CTR {row['ctr']}  "
                     f"zero-result {row['zero_result_rate']}  carts/user {row['carts_per_user']}  "
                     f"purchases/user {row['purchases_per_user']}  p95 {row['p95_ms']} ms")
        for metric, value in (row.get("lift") or {}).items():
            if value["lift"] is not None:
                lines.append(f"             {metric} lift {value['lift']:+.2%} (95% CI {value['ci_low']:+.2%} .. "
                             f"{value['ci_high']:+.2%}, p {value['p_value']:.3g})")
    check = report["srm"]
    lines.append(f"  sample ratio: p {check['p_value']} -> " + ("MISMATCH: do not trust the lifts" if check["mismatch"]
                                                             else "ok"))
    lines.append(f"  shoppers needed per arm for a {report['mde']:.0%} CTR change: {report['users_needed_per_arm']} "
                 f"(still needed: {report['users_still_needed_per_arm']})")
    mixed = report.get("interleaving")
    if mixed and mixed.get("preference") is not None:
        lines.append(f"  interleaving: challenger won {mixed['wins']}, lost {mixed['losses']}, tied {mixed['ties']}; "
                     f"preference {mixed['preference']:.3f} (95% CI {mixed['ci_low']:.3f} .. {mixed['ci_high']:.3f}, "
                     f"p {mixed['p_value']:.3g})")
    return "\n".join(lines)


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)
