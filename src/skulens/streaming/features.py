"""Windowed aggregates of the events table (Spark), the source of the online features.

Per product, for each window (1 h, 24 h, 7 d, in event time up to ``as_of``): impressions,
clicks, carts, purchases, the expected examinations (the sum of the examination propensity of each
impression's position), the raw CTR, the position-debiased CTR (clicks / examinations) and a
popularity score (click 1, cart 3, purchase 5). ``ctr_prior`` is the 7-day debiased CTR shrunk
towards the catalogue's (a product with few examinations keeps close to the average).

Per query (as searched), for each window: searches, the share that found nothing (zero-result
rate), the share with at least one click (CTR), and the share the shopper replaced with another
search of the same session within two minutes without clicking (reformulation rate).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

WINDOWS_S = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}
PRIOR_STRENGTH = 10.0  # examinations' worth of the catalogue average in ctr_prior
REFORMULATION_S = 120
# Popularity: what each action is worth (the click log's popularity in serving uses the same).
EVENT_WEIGHTS = {"click": 1.0, "add_to_cart": 3.0, "purchase": 5.0}


def propensity(position: Column, eta: float = 1.0) -> Column:
    """Examination propensity of a position: ``1 / position ** eta`` (until a ranker estimates the
    curve from the logs, eta = 1)."""
    from pyspark.sql import functions as F

    return F.pow(F.greatest(position.cast("double"), F.lit(1.0)), -eta)


def _within(seconds: int, as_of: datetime) -> Column:
    from pyspark.sql import functions as F

    return F.col("ts") > F.lit(as_of).cast("timestamp") - F.expr(f"INTERVAL {seconds} SECONDS")


def product_aggregates(events: DataFrame, as_of: datetime, eta: float = 1.0) -> DataFrame:
    """One row per product seen in ``events`` (the last 7 days), the columns the module docstring lists."""
    from pyspark.sql import functions as F

    kind = F.col("event_type")
    columns = []
    for name, seconds in WINDOWS_S.items():
        inside = _within(seconds, as_of)

        def count(what: str, inside: Column = inside) -> Column:
            return F.sum(F.when(inside & (kind == what), 1).otherwise(0))

        columns += [
            count("impression").alias(f"impressions_{name}"),
            count("click").alias(f"clicks_{name}"),
            count("add_to_cart").alias(f"carts_{name}"),
            count("purchase").alias(f"purchases_{name}"),
            F.sum(F.when(inside & (kind == "impression"), propensity(F.col("position"), eta)).otherwise(0.0))
            .alias(f"examinations_{name}"),
        ]
    grouped = events.where(F.col("product_id").isNotNull()).groupBy("product_id").agg(*columns)
    for name in WINDOWS_S:
        grouped = (grouped
                   .withColumn(f"ctr_{name}", F.when(F.col(f"impressions_{name}") > 0,
                                                     F.col(f"clicks_{name}") / F.col(f"impressions_{name}")))
                   .withColumn(f"debiased_ctr_{name}", F.when(F.col(f"examinations_{name}") > 0,
                                                              F.col(f"clicks_{name}") / F.col(f"examinations_{name}")))
                   .withColumn(f"popularity_{name}", EVENT_WEIGHTS["click"] * F.col(f"clicks_{name}")
                               + EVENT_WEIGHTS["add_to_cart"] * F.col(f"carts_{name}")
                               + EVENT_WEIGHTS["purchase"] * F.col(f"purchases_{name}")))
    totals = grouped.agg(F.sum("clicks_7d").alias("c"), F.sum("examinations_7d").alias("e")).first()
    average = float(totals["c"] or 0) / float(totals["e"]) if totals["e"] else 0.0
    return grouped.withColumn("ctr_prior", (F.col("clicks_7d") + F.lit(PRIOR_STRENGTH * average))
                              / (F.col("examinations_7d") + F.lit(PRIOR_STRENGTH)))


def query_aggregates(events: DataFrame, as_of: datetime) -> DataFrame:
    """One row per query searched in ``events`` (the last 7 days), with the rates per window."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    searches = events.where((F.col("event_type") == "search") & F.col("query").isNotNull()) \
        .select("search_id", "ts", "session_id", F.lower(F.trim("query")).alias("query"), "results")
    clicked = events.where((F.col("event_type") == "click") & F.col("search_id").isNotNull()) \
        .select("search_id").distinct().withColumn("clicked", F.lit(1))
    session = Window.partitionBy("session_id").orderBy("ts", "search_id")
    searches = (searches.join(clicked, "search_id", "left").fillna({"clicked": 0})
                .withColumn("_next", F.lead("ts").over(session)))
    replaced = (F.col("session_id").isNotNull() & (F.col("clicked") == 0) & F.col("_next").isNotNull()
                & (F.col("_next").cast("long") - F.col("ts").cast("long") <= REFORMULATION_S))
    columns = []
    for name, seconds in WINDOWS_S.items():
        inside = _within(seconds, as_of)
        n = F.sum(F.when(inside, 1).otherwise(0))

        def rate(condition: Column, inside: Column = inside, n: Column = n) -> Column:
            return F.when(n > 0, F.sum(F.when(inside & condition, 1).otherwise(0)) / n)

        columns += [n.alias(f"searches_{name}"), rate(F.col("results") == 0).alias(f"zero_result_rate_{name}"),
                    rate(F.col("clicked") == 1).alias(f"ctr_{name}"),
                    rate(replaced).alias(f"reformulation_rate_{name}")]
    return searches.groupBy("query").agg(*columns)
