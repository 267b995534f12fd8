"""Benchmark: what puts type and colour into the photo vector, trained and measured on held-out photos.

Trains the two-tower heads (the offline config, frozen trunks, cached features) in four variants
and scores each on the held-out products against the named baselines:

* ``offline``: the shipped config (image-text contrastive loss only);
* ``+labels``: plus the auxiliary classification of the photo vector into article type, colour and
  gender (``label_loss_weight``);
* ``+colour``: the image tower with the Lab colour histogram in it (model ``skulens-offline-colour``);
* ``+colour +labels``: both;
* ``+colour +mlp (+labels)``: the photo side projected by a two-layer MLP instead of a linear map
  (model ``skulens-offline-colour-mlp``): the shipped ``offline`` config is ``+colour+mlp+labels``.

Photo->photo P@10 (same type; same type and colour) on the test split (the query excluded) and on
the pool of every held-out product (validation + test: more than 1,500 photos; validation chose
the best epoch by text->image scores, not by photo->photo ones); text->image with the products'
own display names against a photo-only index (R@10 of the own photo, same pools); the test
split's attribute-query figures of ``evaluate_two_tower``.

    .venv/bin/python benchmarks/bench_photo_tower.py [--variants offline,+colour+labels] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _report import machine_description, write_report

VARIANTS = {
    "offline": {"model": "skulens-offline", "label_loss_weight": 0.0},
    "+labels": {"model": "skulens-offline", "label_loss_weight": 0.5},
    "+colour": {"model": "skulens-offline-colour", "label_loss_weight": 0.0},
    "+colour+labels": {"model": "skulens-offline-colour", "label_loss_weight": 0.5},
    "+colour+mlp": {"model": "skulens-offline-colour-mlp", "label_loss_weight": 0.0},
    "+colour+mlp+labels": {"model": "skulens-offline-colour-mlp", "label_loss_weight": 0.5},
}


def held_out_scores(settings, bundle: Path, cfg, pairs: Path) -> dict[str, dict[str, float]]:  # noqa: ANN001
    """Photo->photo and display-name->photo on the test split and on validation + test together."""
    from skulens.data.catalog import read_table
    from skulens.data.pairs import ProductSet, load_split
    from skulens.evaluation.embedder import photo_to_photo, text_to_own_photo
    from skulens.models.two_tower import TwoTower
    from skulens.training.features import split_features
    from skulens.training.two_tower import _embed

    products = read_table(settings, "fashion", "products")
    tower = TwoTower.load(bundle, cache_dir=settings.home / "cache" / "models")
    cache = settings.home / "cache" / "features"
    out, vectors = {}, {}
    for split in ("val", "test"):
        ps = load_split(pairs, products, split, cfg.data_source)
        emb = _embed(tower, ps, ["x"], split_features(tower, ps, cache))
        vectors[split] = (ps, emb.images, emb.titles)  # titles: the display names through the text tower
    (val, val_images, val_titles), (test, test_images, test_titles) = vectors["val"], vectors["test"]
    pool = ProductSet("val+test", *[getattr(val, f) + getattr(test, f) for f in (
        "product_ids", "images", "titles", "attribute_texts", "degraded_titles", "attributes")])
    for name, ps, images, titles in (
            ("test", test, test_images, test_titles),
            ("held_out_pool", pool, np.concatenate([val_images, test_images]),
             np.concatenate([val_titles, test_titles]))):
        out[name] = {"photos": len(ps), **photo_to_photo(ps, images), **text_to_own_photo(ps, titles, images)}
    return out


def held_out_row(name: str, h: dict) -> str:
    """One table row: photos, same-type P@10, same type+colour P@10, display name -> photo R@10."""
    return f"| {name} | {h['photos']} | {h['i2i_P@10_type']:.3f} | {h['i2i_P@10']:.3f} | {h['t2i_R@10']:.3f} |"


def run_variant(settings, name: str, overrides: dict, epochs: int | None) -> dict:  # noqa: ANN001
    from skulens.storage.layout import pairs_dir
    from skulens.training.config import load_train_config
    from skulens.training.two_tower import evaluate_two_tower, train_two_tower

    # Every variant states its model and label weight: the shipped config's own choice is not assumed.
    cfg = load_train_config("offline", settings, {**overrides, "epochs": epochs})
    pairs = pairs_dir(settings)
    out_dir = settings.home / "bench" / "photo_tower" / name.replace("+", "plus_")
    shutil.rmtree(out_dir, ignore_errors=True)
    started = time.perf_counter()
    trained = train_two_tower(settings, cfg, pairs_dir=pairs, run_id=f"bench-photo-{name}", out_dir=out_dir)
    evaluated = evaluate_two_tower(settings, cfg, bundle=Path(trained["bundle"]), pairs_dir=pairs)
    held_out = held_out_scores(settings, Path(trained["bundle"]), cfg, pairs)
    return {"config": cfg.model_dump(mode="json"), "seconds": round(time.perf_counter() - started, 1),
            "timings": trained["timings"], "best_epoch": trained["best_epoch"],
            "train_products": trained["data"]["train_products"], "test": evaluated["test"], "held_out": held_out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    args = parser.parse_args()
    from skulens.settings import load_settings

    settings = load_settings("local")
    names = [v for v in args.variants.split(",") if v]
    results = {}
    for name in names:
        print(f"== {name}", flush=True)
        results[name] = run_variant(settings, name, VARIANTS[name], args.epochs)
    first = results[names[0]]
    baselines = {"ImageNet trunk features (no projection)": first["test"].get("imagenet_trunk", {}),
                 "untrained projections": first["test"]["untrained_projections"]}
    epochs_flag = f" --epochs {args.epochs}" if args.epochs else ""
    lines = [
        "# Photo tower: type and colour in the photo vector (held-out fashion photos)", "",
        f"Command: `.venv/bin/python benchmarks/bench_photo_tower.py{epochs_flag}`"
        f" on {machine_description()}, {datetime.now(UTC):%Y-%m-%d}.",
        f"Training: config `offline` (frozen trunks, cached trunk features, heads only), "
        f"{first['train_products']:,} training products; the best epoch chosen on validation "
        "text->image scores.",
        "Variants: `+labels` adds the auxiliary classification of the photo vector into article type, colour "
        "and gender (weight 0.5); `+colour` is the model `skulens-offline-colour` (a Lab histogram of the "
        "product region joined to the trunk's features inside the image tower); `+mlp` projects the photo side "
        "with a two-layer MLP (`skulens-offline-colour-mlp`). The shipped `offline` config is "
        "`+colour+mlp+labels`.", "",
        "## Test split (photo->photo with the query excluded; text->image: display name -> own photo)", "",
        "| model | photos | P@10 same type | P@10 same type+colour | display name -> photo R@10 |",
        "|---|---:|---:|---:|---:|",
    ]
    n_test = first["held_out"]["test"]["photos"]
    def cell(m: dict, key: str) -> str:
        return f"{m[key]:.3f}" if key in m else "-"

    for label, m in baselines.items():
        lines.append(f"| baseline: {label} | {n_test} | {cell(m, 'i2i_P@10_type')} | {cell(m, 'i2i_P@10')} | "
                     f"{cell(m, 't2i_R@10')} |")
    for name in names:
        h = results[name]["held_out"]["test"]
        lines.append(held_out_row(name, h))
    lines += ["", "## Every held-out product (validation + test pool)", "",
              "| model | photos | P@10 same type | P@10 same type+colour | display name -> photo R@10 |",
              "|---|---:|---:|---:|---:|"]
    for name in names:
        h = results[name]["held_out"]["held_out_pool"]
        lines.append(held_out_row(name, h))
    lines += ["", "## Attribute queries on the test split (evaluate_two_tower; queries are attribute-derived)", "",
              "| model | image-only nDCG@10 | degraded titles fused nDCG@10 | full titles fused nDCG@10 "
              "| best epoch | train s |",
              "|---|---:|---:|---:|---:|---:|"]
    for name in names:
        t = results[name]["test"]["trained"]
        lines.append(f"| {name} | {t['image_only_nDCG@10']:.4f} | {t['degraded_title_fused_nDCG@10']:.4f} | "
                     f"{t['full_title_fused_nDCG@10']:.4f} | {results[name]['best_epoch']} | "
                     f"{results[name]['timings'].get('train_s', 0):.0f} |")
    write_report("photo_tower", lines, {"results": results, "command": "benchmarks/bench_photo_tower.py"})
    print(json.dumps({n: r["held_out"] for n, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
