"""Benchmark: does tuning the image trunk's last layers beat training the heads alone, on CPU?

The offline config trains only the projection heads over cached pooled trunk features. This script
measures the next step the photo-search issue asks for, still within a CPU budget: the frozen part
of the packaged EfficientNet-Lite0 trunk runs once (ONNX Runtime fp32) and its last feature maps
(7 x 7) are cached; then the trunk's tail (``conv_head`` + its BatchNorm, optionally the last block
stage too) trains together with the heads, at a lower learning rate, with the shipped losses
(image-text contrastive, attribute-title alignment, label loss) and the shipped model
(``skulens-offline-colour-mlp``: the colour histogram joins after the tail, as in the tower).
Augmentation on cached maps: random spatial positions dropped before the global pool.

Variants, same seeds and data order:

* ``heads``: the tail frozen (the shipped recipe, re-run here as the paired baseline);
* ``conv_head``: conv_head + BN tuned (lr ``--tail-lr``, positions dropped with p = 0.25);
* ``last_block``: the last block stage, conv_head and BN tuned (lr 1e-4, no drop).

Each picks its best epoch on validation (the training score: attribute queries and title->photo),
then scores the **test** split: photo->photo P@10 (same type; same type + colour; the query
excluded), display name -> own photo R@10, image-only attribute-query nDCG@10; the photo->photo
differences against ``heads`` come with paired bootstrap 95% CIs over the test photos.

    .venv/bin/python benchmarks/bench_photo_tail.py [--variants heads,conv_head] [--epochs 12]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

import numpy as np
from _report import machine_description, write_report

VARIANTS = {
    "heads": {"tail_blocks": 0, "tail_lr": 0.0, "drop": 0.0},
    "conv_head": {"tail_blocks": 0, "tail_lr": 3e-4, "drop": 0.25},
    "last_block": {"tail_blocks": 1, "tail_lr": 1e-4, "drop": 0.0},
}


def cached_maps(settings, tower, products, split: str, tail_blocks: int) -> np.ndarray:  # noqa: ANN001
    """(N, C, 7, 7) float16 feature maps of the frozen front of the trunk, cached on disk."""
    import torch
    from torch import nn

    from skulens.export.onnx_export import export_module
    from skulens.models.onnx import session

    eff = tower.model.visual.trunk.inner
    folder = settings.home / "cache" / "bench_photo_tail"
    path = folder / f"{split}-front{tail_blocks}-{len(products)}.npy"
    if path.is_file():
        return np.load(path)
    folder.mkdir(parents=True, exist_ok=True)
    keep = len(eff.blocks) - tail_blocks

    class Front(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.eff = eff

        def forward(self, pixels):  # noqa: ANN001, ANN202
            x = self.eff.bn1(self.eff.conv_stem(pixels))
            for block in self.eff.blocks[:keep]:
                x = block(x)
            return x

    onnx_path = folder / f"front{tail_blocks}.onnx"
    eff.eval()
    if not onnx_path.is_file():
        example = torch.stack([tower.load_image(i) for i in products.images[:2]])
        export_module(Front(), (example,), onnx_path, ["pixels"], "maps")
    sess = session(onnx_path)
    out = []
    for start in range(0, len(products), 64):
        batch = torch.stack([tower.load_image(i) for i in products.images[start:start + 64]]).numpy()
        out.append(sess.run(None, {"pixels": batch})[0].astype(np.float16))
    maps = np.concatenate(out)
    np.save(path, maps)
    return maps


def tail_module(tower, tail_blocks: int, drop: float):  # noqa: ANN001, ANN201
    """The trunk's tail over cached maps, then the colour histogram (cached) joined as in the tower."""
    import torch
    from torch import nn

    eff = tower.model.visual.trunk.inner

    class Tail(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(eff.blocks[len(eff.blocks) - tail_blocks:]) if tail_blocks else nn.ModuleList()
            self.conv_head, self.bn2 = eff.conv_head, eff.bn2

        def forward(self, maps, hist):  # noqa: ANN001, ANN202
            x = maps
            for block in self.blocks:
                x = block(x)
            x = self.bn2(self.conv_head(x))
            if self.training and drop > 0:
                keep = (torch.rand(x.shape[0], 1, x.shape[2], x.shape[3]) > drop).float()
                pooled = (x * keep).sum((2, 3)) / keep.sum((2, 3)).clamp_min(1)
            else:
                pooled = x.mean((2, 3))
            return torch.cat([pooled, hist], 1)

    return Tail()


def per_photo_precision(products, images: np.ndarray, fields: tuple[str, ...]) -> np.ndarray:  # noqa: ANN001
    """P@10 of each photo querying the others (itself excluded): the share of its 10 nearest with
    the same ``fields``."""
    v = images / np.linalg.norm(images, axis=1, keepdims=True)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argpartition(-sims, 10, axis=1)[:, :10]
    keys = np.array(["|".join(str(a.get(f)) for f in fields) for a in products.attributes])
    return (keys[top] == keys[:, None]).mean(axis=1)


def paired_ci(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``b - a`` and its paired bootstrap 95% interval."""
    diff = b - a
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def run_variant(settings, name: str, epochs: int | None) -> dict:  # noqa: ANN001, C901
    import torch
    from torch import nn

    from skulens.data.catalog import read_table
    from skulens.data.pairs import load_split
    from skulens.evaluation.embedder import attribute_queries, evaluate_split, photo_to_photo, text_to_own_photo
    from skulens.models.colour_tower import COLOUR_DIMS
    from skulens.models.two_tower import TwoTower
    from skulens.storage.layout import pairs_dir
    from skulens.training import two_tower as tt
    from skulens.training.config import load_train_config
    from skulens.training.features import split_features

    v = VARIANTS[name]
    cfg = load_train_config("offline", settings, {"epochs": epochs, "model": "skulens-offline-colour-mlp"})
    tt._seed_everything(cfg.seed)
    products_table = read_table(settings, "fashion", "products")
    splits = {s: load_split(pairs_dir(settings), products_table, s, cfg.data_source) for s in ("train", "val", "test")}
    tower = TwoTower.build(cfg.model, cache_dir=settings.home / "cache" / "models")
    feats = {s: split_features(tower, ps, settings.home / "cache" / "features") for s, ps in splits.items()}
    maps = {s: cached_maps(settings, tower, ps, s, v["tail_blocks"]) for s, ps in splits.items()}
    tail = tail_module(tower, v["tail_blocks"], v["drop"])
    queries = {s: attribute_queries(splits[s], cfg.max_eval_queries, cfg.seed + (s == "test")) for s in ("val", "test")}

    tt._lock(tower, cfg)
    label_classes, label_ids = tt.label_targets(splits["train"], cfg.label_fields)
    module = tt._make_module(tower, cfg, label_classes)
    tail_params = list(tail.parameters()) if v["tail_lr"] > 0 else []
    for p in tail.parameters():
        p.requires_grad = v["tail_lr"] > 0
    heads = [p for p in module.parameters() if p.requires_grad and not any(p is q for q in tail_params)]
    groups = [{"params": heads, "lr": cfg.lr}] + ([{"params": tail_params, "lr": v["tail_lr"]}] if tail_params else [])
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    d = tt._dist_from_env("cpu")
    train = splits["train"]
    total = max(1, len(train) // cfg.batch_size) * cfg.epochs
    warmup = int(total * cfg.warmup_fraction)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else
                                                  0.5 * (1 + np.cos(np.pi * (s - warmup) / max(1, total - warmup))))
    loss_fn = tt._loss_fn(cfg, d)

    def photo_vectors(split: str) -> np.ndarray:
        tail.eval()
        out = []
        with torch.inference_mode():
            for s in range(0, len(maps[split]), 256):
                x = tail(torch.from_numpy(maps[split][s:s + 256].astype(np.float32)),
                         torch.from_numpy(feats[split].images[s:s + 256, -COLOUR_DIMS:]))
                out.append(nn.functional.normalize(tower.image_head(x), dim=-1).numpy())
        return np.concatenate(out)

    def scores(split: str) -> tuple[dict, np.ndarray]:
        from dataclasses import replace

        q, qrels = queries[split]
        images = photo_vectors(split)
        emb = replace(tt._embed(tower, splits[split], q, feats[split]), images=images)
        metrics, _ = evaluate_split(splits[split], emb, qrels)
        photo = {**photo_to_photo(splits[split], images), **text_to_own_photo(splits[split], emb.titles, images)}
        return {**metrics, **photo, "score": tt.score_summary(metrics)}, images

    rng = np.random.default_rng(cfg.seed)
    best: dict = {"score": -1.0}
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        module.train()
        tail.train()
        tail.bn2.eval()  # BN statistics stay the trunk's: the affine parameters still train
        for block in tail.blocks:
            block.eval()
        for idx in tt._batches(len(train), cfg.batch_size, rng, d):
            view, title_view = tt._texts_for(train, idx, cfg, rng)
            inputs = list(tt._step_inputs(tower, train, feats["train"], idx, view, title_view, cfg, "cpu"))
            inputs[0] = tail(torch.from_numpy(maps["train"][idx].astype(np.float32)), inputs[0][:, -COLOUR_DIMS:])
            zi, zt, za, zti = module(*inputs)
            scale = tower.model.logit_scale.exp()
            loss = loss_fn(zi, zt, scale) + cfg.text_text_weight * loss_fn(za, zti, scale)
            loss = loss + cfg.label_loss_weight * module.label_loss(zi, torch.from_numpy(label_ids[idx]))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            with torch.no_grad():
                tower.model.logit_scale.clamp_(0, float(np.log(100)))
        val, _ = scores("val")
        print(f"{name} epoch {epoch + 1}: val score {val['score']:.4f}", flush=True)
        if val["score"] > best["score"]:
            test, images = scores("test")
            best = {"score": val["score"], "epoch": epoch + 1, "test": test, "images": images}
    seconds = round(time.perf_counter() - started, 1)
    test_set = splits["test"]
    per_photo = {key: per_photo_precision(test_set, best["images"], fields)
                 for key, fields in (("type", ("article_type",)), ("type_colour", ("article_type", "colour")))}
    return {"variant": v, "best_epoch": best["epoch"], "train_s": seconds, "test": best["test"],
            "per_photo": per_photo, "photos": len(test_set), "train_products": len(train)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs (12)")
    args = parser.parse_args()
    from skulens.settings import load_settings

    settings = load_settings("local")
    names = [n for n in args.variants.split(",") if n]
    if names[0] != "heads":
        raise SystemExit("the first variant must be `heads`, the paired baseline")
    results = {n: run_variant(settings, n, args.epochs) for n in names}
    base = first = results["heads"]
    lines = [
        "# Photo tower: tuning the trunk's tail on cached feature maps (CPU)", "",
        f"Command: `.venv/bin/python benchmarks/bench_photo_tail.py"
        f"{' --epochs ' + str(args.epochs) if args.epochs else ''}` on {machine_description()}, "
        f"{datetime.now(UTC):%Y-%m-%d}.",
        f"Model `skulens-offline-colour-mlp`, config `offline` losses, {first['train_products']:,} training "
        f"products, best epoch on validation; test split of {first['photos']} photos. `heads` is the shipped "
        "recipe (the trunk frozen); the others tune the trunk's tail over cached 7 x 7 maps.", "",
        "| variant | tuned | tail lr | best epoch | train s | P@10 same type | P@10 same type+colour | "
        "name -> photo R@10 | image-only nDCG@10 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n, r in results.items():
        t, v = r["test"], r["variant"]
        tuned = "-" if not v["tail_lr"] else ("conv_head + BN" if not v["tail_blocks"] else
                                               f"last {v['tail_blocks']} block stage + conv_head + BN")
        lines.append(f"| {n} | {tuned} | {v['tail_lr'] or '-'} | {r['best_epoch']} | {r['train_s']:.0f} | "
                     f"{t['i2i_P@10_type']:.3f} | {t['i2i_P@10']:.3f} | {t['t2i_R@10']:.3f} | "
                     f"{t['image_only_nDCG@10']:.4f} |")
    lines += ["", "Paired differences against `heads` on the test photos (bootstrap 95% CI):", ""]
    for n, r in results.items():
        if n == "heads":
            continue
        for key, label in (("type", "same type"), ("type_colour", "same type+colour")):
            mean, lo, hi = paired_ci(base["per_photo"][key], r["per_photo"][key])
            lines.append(f"- {n}, P@10 {label}: {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    payload = {n: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items() if k != "per_photo"}
               for n, r in results.items()}
    write_report("photo_tail", lines, {"results": payload, "command": "benchmarks/bench_photo_tail.py"})


if __name__ == "__main__":
    main()
