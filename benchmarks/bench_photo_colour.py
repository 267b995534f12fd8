"""Benchmark: photo -> photo search on held-out fashion photos, and what a colour descriptor adds.

Pools: every fashion product with a photo, an article type and a colour, hashed by id into a test
pool (20%, >= 1,500 photos) and a validation pool (13%); each test photo queries the other test
photos, itself excluded. P@10 of the same article type, of the same type and colour, and of the
same colour. Descriptors (named baselines first):

* the packaged ImageNet EfficientNet-Lite0 trunk (the two-tower image tower's frozen trunk,
  average-pooled, cosine): what photo search starts from before any training;
* every registered colour descriptor (``skulens.models.colour.DESCRIPTORS``) alone and fused with
  the trunk, ``w * cos_trunk + (1 - w) * cos_colour`` with ``w`` chosen on the validation pool;
* TF-IDF over the products' display names: a text reference (it reads the colour and type words).

The pools ignore the training pairs' split: none of these descriptors is trained, so no photo
here was seen in training. A trained image tower must be measured on photos it never saw.

    .venv/bin/python benchmarks/bench_photo_colour.py
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_description, write_report  # noqa: E402


def _trunk(settings, images: list[str], spec: str) -> tuple[np.ndarray, float]:  # noqa: ANN001
    from skulens.models.two_tower import TwoTower
    from skulens.training.features import image_trunk_features
    from skulens.vectors import normalise

    model = TwoTower.build(spec, cache_dir=settings.home / "cache" / "models")
    started = time.perf_counter()
    features = image_trunk_features(model, images, cache_dir=settings.home / "cache" / "models")
    return normalise(features), 1000 * (time.perf_counter() - started) / len(images)


def _tfidf(titles: list[str]) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    matrix = TfidfVectorizer(sublinear_tf=True).fit_transform(titles)
    return (matrix @ matrix.T).toarray().astype(np.float32)


def main() -> None:  # noqa: PLR0915 - one linear measurement script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", default="fashion")
    parser.add_argument("--model", default="skulens-offline", help="model config whose image trunk is the baseline")
    args = parser.parse_args()

    from skulens.data.catalog import read_table
    from skulens.evaluation.metrics import paired_bootstrap
    from skulens.evaluation.photos import (
        chance_precision,
        choose_weight,
        colour_confusions,
        pool_of,
        precision_per_query,
    )
    from skulens.models.colour import DESCRIPTORS, colour_descriptors
    from skulens.settings import load_settings

    settings = load_settings()
    rows = [r for r in read_table(settings, args.catalog, "products").to_pylist() if r["image_uri"]]
    for r in rows:
        r["attrs"] = {k: v for k, v in (r["attributes"] or [])}
    rows = [r for r in rows if r["attrs"].get("article_type") and r["attrs"].get("colour")
            and Path(r["image_uri"]).is_file()]
    pools = {name: [r for r in rows if pool_of(r["product_id"]) == name] for name in ("test", "val")}
    print({k: len(v) for k, v in pools.items()}, flush=True)

    sims: dict[str, dict[str, np.ndarray]] = {}
    timing: dict[str, float] = {}
    for name, pool in pools.items():
        images = [r["image_uri"] for r in pool]
        trunk, timing["trunk"] = _trunk(settings, images, args.model)
        sims[name] = {"trunk": trunk @ trunk.T, "tfidf": _tfidf([r["title"] or "" for r in pool])}
        for descriptor in DESCRIPTORS:
            started = time.perf_counter()
            colour = colour_descriptors(images, descriptor)
            timing[descriptor] = 1000 * (time.perf_counter() - started) / len(images)
            sims[name][descriptor] = colour @ colour.T
        print(f"{name}: descriptors of {len(images)} photos", flush=True)
    labels = {name: ([r["attrs"]["article_type"] for r in pool], [r["attrs"]["colour"] for r in pool])
              for name, pool in pools.items()}

    test_types, test_colours = labels["test"]
    rows_out: dict[str, dict] = {"chance": chance_precision(test_types, test_colours)}
    per_query: dict[str, dict[str, np.ndarray]] = {}

    def measure(label: str, similarity: np.ndarray) -> None:
        per_query[label] = precision_per_query(similarity, test_types, test_colours)
        rows_out[label] = {metric: float(v.mean()) for metric, v in per_query[label].items()}

    measure("ImageNet trunk (Lite0)", sims["test"]["trunk"])
    weights: dict[str, dict] = {}
    for descriptor in DESCRIPTORS:
        measure(f"colour only: {descriptor}", sims["test"][descriptor])
        w, tried = choose_weight(sims["val"]["trunk"], sims["val"][descriptor], *labels["val"])
        weights[descriptor] = {"chosen": w, "validation_P@10_type+colour": tried}
        measure(f"trunk + {descriptor} (w={w:g})", w * sims["test"]["trunk"] + (1 - w) * sims["test"][descriptor])
    measure("TF-IDF display names (text reference)", sims["test"]["tfidf"])

    trunk_label = "ImageNet trunk (Lite0)"
    deltas = {label: {metric: paired_bootstrap(per_query[label][metric], per_query[trunk_label][metric])
                      for metric in ("type", "type+colour", "colour")}
              for label in per_query if label.startswith("trunk + ")}
    best = max(deltas, key=lambda label: rows_out[label]["type+colour"])
    best_w = weights[best.split(" + ")[1].split(" (")[0]]["chosen"]
    best_descriptor = best.split(" + ")[1].split(" (")[0]
    confusions = {"trunk": colour_confusions(sims["test"]["trunk"], test_types, test_colours),
                  best: colour_confusions(best_w * sims["test"]["trunk"] + (1 - best_w) * sims["test"][best_descriptor],
                                          test_types, test_colours, top=1000)}
    report = {"written_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_description(),
              "pools": {k: len(v) for k, v in pools.items()},
              "article_types": len(set(test_types)), "colours": len(set(test_colours)),
              "rows": rows_out, "weights": weights, "deltas_vs_trunk": deltas, "ms_per_photo": timing,
              "confusions": confusions}
    lines = ["# Photo -> photo search on held-out fashion photos: the trunk, colour descriptors, fusion", "",
             "Command: `.venv/bin/python benchmarks/bench_photo_colour.py`  ",
             f"Machine: {report['machine']}  ", f"Written: {report['written_at']}", "",
             f"Test pool {len(pools['test']):,} photos ({report['article_types']} article types, {report['colours']} "
             f"colours), validation pool {len(pools['val']):,} (chooses each fusion weight); each test photo "
             "queries the other test photos, itself excluded. P@10 = share of the 10 nearest with the same article "
             "type / type and colour / colour (catalogue labels). No descriptor here is trained.", "",
             "| descriptor | P@10 type | P@10 type + colour | P@10 colour |", "|---|---:|---:|---:|"]
    for label, row in rows_out.items():
        lines.append(f"| {label} | {row['type']:.3f} | {row['type+colour']:.3f} | {row['colour']:.3f} |")
    lines += ["", "Fused minus trunk, paired bootstrap over the test photos (2,000 resamples), mean [95% CI]:", "",
              "| fusion | d P@10 type | d P@10 type + colour | d P@10 colour |", "|---|---:|---:|---:|"]
    for label, d in deltas.items():
        lines.append(f"| {label} | " + " | ".join(f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" for m, lo, hi in
                                                  (d["type"], d["type+colour"], d["colour"])) + " |")
    lines += ["", "Colour pairs most confused among same-type top-10 neighbours (test pool):", "",
              f"| colour pair | trunk | {best} |", "|---|---:|---:|"]
    fused_counts = dict(confusions[best])
    for pair, count in confusions["trunk"]:
        lines.append(f"| {pair} | {count} | {fused_counts.get(pair, 0)} |")
    d = deltas[best]
    lines += ["", f"Best on type + colour: {best}, {d['type+colour'][0]:+.3f} over the trunk, at "
              f"{d['type'][0]:+.3f} on type: every fusion weight trades type for colour (validation curves "
              "in photo_colour.json). The served "
              "photo vector does not include a colour descriptor yet."]
    lines += ["", "Time per photo (decode included, 2 cores): " +
              ", ".join(f"{name} {ms:.1f} ms" for name, ms in timing.items()) + "."]
    write_report("photo_colour", lines, report)


if __name__ == "__main__":
    main()
