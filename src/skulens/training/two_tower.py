"""Contrastive fine-tuning of the two-tower model (open_clip losses), with held-out evaluation.

Two paths, one loop:

* **heads** (``precompute_features``): both trunks locked (LiT); their features are computed once
  (:mod:`skulens.training.features`) and only the projection heads (+ temperature) train. This is
  the CPU path of the offline default.
* **full**: images are decoded and both towers run forward each step; towers are locked or partly
  unfrozen as configured. AMP on CUDA; several GPUs with ``torchrun`` (DDP, detected from
  ``WORLD_SIZE``), negatives gathered across ranks by open_clip's loss.

Every epoch evaluates on the validation split; the best epoch's weights are kept. Checkpoints
are written each epoch and a run with the same config and run id resumes from the last one.
:func:`evaluate_two_tower` then scores the test split for the trained model and the named
baselines (untrained projections; text-only MiniLM), with fusion weights chosen on validation.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skulens.data.pairs import ProductSet, load_split
from skulens.evaluation.embedder import (
    SplitEmbeddings,
    attribute_queries,
    evaluate_split,
    minilm_embeddings,
    photo_to_photo,
    tfidf_vectors,
)
from skulens.models.two_tower import TwoTower
from skulens.settings import Settings
from skulens.training.config import TwoTowerTrainConfig

PRIMARY = ("image_only_nDCG@10", "degraded_title_fused_nDCG@10")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_from_env(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(cfg: TwoTowerTrainConfig) -> str:
    import torch

    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def score_summary(metrics: dict[str, float]) -> float:
    """The validation score that picks the best epoch: mean of the two settings users need most."""
    return float(np.mean([metrics.get(k, 0.0) for k in PRIMARY]))


def _loss_fn(cfg: TwoTowerTrainConfig, d: Dist):  # noqa: ANN202
    from skulens.models.two_tower import import_open_clip

    open_clip = import_open_clip()
    if cfg.loss == "siglip":
        return open_clip.SigLipLoss(rank=d.rank, world_size=d.world)
    return open_clip.ClipLoss(local_loss=d.world > 1, gather_with_grad=d.world > 1, rank=d.rank, world_size=d.world)


def label_targets(products: ProductSet, fields: list[str]) -> tuple[dict[str, list[str]], np.ndarray]:
    """Class names per label field (sorted, from ``products``) and a (N, fields) int array of each
    product's class, -1 where the product has no value (ignored by the loss)."""
    classes = {f: sorted({a[f] for a in products.attributes if a.get(f)}) for f in fields}
    index = {f: {c: i for i, c in enumerate(names)} for f, names in classes.items()}
    targets = np.array([[index[f].get(a.get(f, ""), -1) for f in fields] for a in products.attributes],
                       dtype=np.int64).reshape(len(products), len(fields))
    return classes, targets


def _make_module(tower: TwoTower, cfg: TwoTowerTrainConfig, label_classes: dict[str, list[str]] | None = None
                 ):  # noqa: ANN202
    import torch
    from torch import nn

    class Trainable(nn.Module):
        """Wraps the model so DDP sees one forward: returns normalised (image, text, attr, title)."""

        def __init__(self) -> None:
            super().__init__()
            self.clip = tower.model
            self.logit_bias_extra = nn.Parameter(torch.tensor(-10.0)) if cfg.loss == "siglip" and \
                getattr(tower.model, "logit_bias", None) is None else None
            # One linear classifier per label field over the unit photo vector (cosine logits x 16):
            # training-time only, never saved in the bundle.
            self.label_heads = nn.ModuleList(
                nn.Linear(tower.embed_dim, max(1, len(names)), bias=False) for names in (label_classes or {}).values())

        def forward(self, image, text, attr=None, title=None):  # noqa: ANN001, ANN202
            norm = nn.functional.normalize
            if cfg.precompute_features:
                zi, zt = norm(tower.image_head(image), dim=-1), norm(tower.text_head(text), dim=-1)
                za = norm(tower.text_head(attr), dim=-1) if attr is not None else None
                zti = norm(tower.text_head(title), dim=-1) if title is not None else None
            else:
                zi = self.clip.encode_image(image, normalize=True)
                zt = self.clip.encode_text(text, normalize=True)
                za = self.clip.encode_text(attr, normalize=True) if attr is not None else None
                zti = self.clip.encode_text(title, normalize=True) if title is not None else None
            return zi, zt, za, zti

        def label_loss(self, zi, targets):  # noqa: ANN001, ANN202
            """Mean cross-entropy of the label classifiers on the photo vectors ``zi``."""
            losses = []
            for j, head in enumerate(self.label_heads):
                weight = nn.functional.normalize(head.weight, dim=-1)
                logits = 16.0 * zi.float() @ weight.t()
                if (targets[:, j] >= 0).any():
                    losses.append(nn.functional.cross_entropy(logits, targets[:, j], ignore_index=-1))
            return torch.stack(losses).mean() if losses else zi.sum() * 0

        def bias(self):  # noqa: ANN202
            own = getattr(self.clip, "logit_bias", None)
            return own if own is not None else self.logit_bias_extra

    return Trainable()


def _lock(tower: TwoTower, cfg: TwoTowerTrainConfig) -> None:
    model = tower.model
    if cfg.lock_image:
        # freeze_bn_stats=False: open_clip's BN freezing replaces timm's BatchNormAct2d and drops
        # its activation; the locked trunk is kept in eval() instead (see _train_mode).
        model.lock_image_tower(unlocked_groups=cfg.unlocked_image_groups, freeze_bn_stats=False)
    if cfg.lock_text:
        model.lock_text_tower(unlocked_layers=cfg.unlocked_text_layers, freeze_layer_norm=True)
    if cfg.precompute_features:
        for p in model.parameters():
            p.requires_grad = False
        for module in (model.visual.head, model.text.proj):
            for p in module.parameters():
                p.requires_grad = True
        model.logit_scale.requires_grad = True


def _train_mode(tower: TwoTower, cfg: TwoTowerTrainConfig) -> None:
    tower.model.train()
    if cfg.lock_image and cfg.unlocked_image_groups == 0 and hasattr(tower.model.visual, "trunk"):
        tower.model.visual.trunk.eval()  # keep BN statistics of the frozen trunk
    if cfg.lock_text and cfg.unlocked_text_layers == 0 and hasattr(tower.model, "text") \
            and hasattr(tower.model.text, "transformer"):
        tower.model.text.transformer.eval()


def _embed(tower: TwoTower, products: ProductSet, query_texts: list[str], feats=None,  # noqa: ANN001
           query_feats: np.ndarray | None = None) -> SplitEmbeddings:
    """Normalised vectors of a split: heads over cached features, or the full encoders."""
    import torch

    tower.model.eval()
    if feats is not None:
        with torch.inference_mode():
            def head(x: np.ndarray, fn) -> np.ndarray:  # noqa: ANN001
                t = torch.from_numpy(x).to(tower.device)
                return torch.nn.functional.normalize(fn(t), dim=-1).float().cpu().numpy()

            from skulens.training.features import text_trunk_features

            q = query_feats if query_feats is not None else text_trunk_features(tower, query_texts, desc="queries")
            return SplitEmbeddings(images=head(feats.images, tower.image_head),
                                   titles=head(feats.titles, tower.text_head),
                                   degraded_titles=head(feats.degraded_titles, tower.text_head),
                                   queries=head(q, tower.text_head))
    return SplitEmbeddings(images=tower.encode_images(products.images), titles=tower.encode_texts(products.titles),
                           degraded_titles=tower.encode_texts(products.degraded_titles),
                           queries=tower.encode_texts(query_texts))


def _batches(n: int, batch_size: int, rng: np.random.Generator, d: Dist) -> list[np.ndarray]:
    order = rng.permutation(n)
    per_step = batch_size * d.world
    steps = max(1, n // per_step)
    return [order[s * per_step:(s + 1) * per_step][d.rank::d.world] for s in range(steps)]


def _texts_for(products: ProductSet, idx: np.ndarray, cfg: TwoTowerTrainConfig, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per product: which text view is its positive (0 title, 1 degraded title, 2 attributes)."""
    view = np.where(rng.random(len(idx)) < 0.5, 0, 2)
    degrade = (view == 0) & (rng.random(len(idx)) < cfg.degrade_title_prob)
    view[degrade] = 1
    title_view = np.where(rng.random(len(idx)) < cfg.degrade_title_prob, 1, 0)
    return view, title_view


def _state(module, cfg: TwoTowerTrainConfig) -> dict[str, Any]:  # noqa: ANN001
    """What a checkpoint keeps: only the trained tensors on the heads path (the trunks never change)."""
    if cfg.precompute_features:
        return {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_two_tower(settings: Settings, cfg: TwoTowerTrainConfig, *, pairs_dir: Path, run_id: str,
                    out_dir: Path | None = None, log_epoch=None) -> dict[str, Any]:  # noqa: ANN001
    """Train, evaluate against baselines, save the bundle; return a JSON-able result.

    ``log_epoch(epoch, metrics)`` is called on the main rank after each epoch (MLflow logging).
    """
    import torch

    from skulens.data.catalog import read_table
    from skulens.training.features import split_features, text_trunk_features

    started = time.perf_counter()
    device = _device(cfg)
    d = _dist_from_env(device)
    if d.world > 1 and device == "cuda":
        device = f"cuda:{d.local_rank}"
        torch.cuda.set_device(d.local_rank)
    _seed_everything(cfg.seed)
    out_dir = out_dir or settings.home / "training" / "two_tower" / run_id
    cache_dir = settings.home / "cache" / "models"
    products_table = read_table(settings, "fashion", "products")
    splits = {s: load_split(pairs_dir, products_table, s, cfg.data_source) for s in ("train", "val")}
    train = splits["train"].subset(cfg.max_train_products, cfg.seed)
    val = splits["val"].subset(cfg.max_eval_products, cfg.seed)
    if len(train) < 2:
        raise ValueError(f"only {len(train)} training products in {pairs_dir}; nothing to train on")

    tower = TwoTower.build(cfg.model, cache_dir=cache_dir, device=device)
    timings: dict[str, float] = {}
    feats = {}
    if cfg.precompute_features:
        t0 = time.perf_counter()
        feats = {name: split_features(tower, ps, settings.home / "cache" / "features")
                 for name, ps in (("train", train), ("val", val))}
        timings["features_s"] = round(time.perf_counter() - t0, 1)

    val_q, val_qrels = attribute_queries(val, cfg.max_eval_queries, cfg.seed)

    # Baseline 1, the untrained projections: the model exactly as built, before any step.
    # The trunks are frozen on the heads path: the validation queries' features never change.
    val_qf = text_trunk_features(tower, val_q, desc="queries") if cfg.precompute_features else None
    base_val, base_w = evaluate_split(val, _embed(tower, val, val_q, feats.get("val"), val_qf), val_qrels)

    _lock(tower, cfg)
    label_classes, label_ids = label_targets(train, cfg.label_fields) if cfg.label_loss_weight > 0 else ({}, None)
    module = _make_module(tower, cfg, label_classes).to(device)
    trainable = [p for p in module.parameters() if p.requires_grad]
    model_for_step = module
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [d.local_rank] if device.startswith("cuda") else None
        model_for_step = DistributedDataParallel(module, device_ids=ids)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train) // (cfg.batch_size * d.world) // cfg.grad_accum_steps)
    total = steps_per_epoch * cfg.epochs
    warmup = int(total * cfg.warmup_fraction)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    loss_fn = _loss_fn(cfg, d)
    use_amp = cfg.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    ckpt = out_dir / "checkpoints" / "last.pt"
    history: list[dict[str, Any]] = []
    start_epoch, best = 0, {"score": -1.0, "epoch": -1, "state": None, "metrics": {}, "weights": {}}
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        if state["config_digest"] == cfg.digest():
            module.load_state_dict(state["module"], strict=not cfg.precompute_features)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
            torch.set_rng_state(state["torch_rng"])

    rng = np.random.default_rng(cfg.seed)
    for _ in range(start_epoch):  # replay the data order of finished epochs, so resume == uninterrupted
        for idx in _batches(len(train), cfg.batch_size, rng, d):
            _texts_for(train, idx, cfg, rng)

    from tqdm.auto import tqdm

    t_train = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        _train_mode(tower, cfg)
        losses = []
        batches = _batches(len(train), cfg.batch_size, rng, d)
        quiet = not d.main or os.environ.get("SKULENS_PROGRESS") == "0"
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=quiet)
        for step, idx in enumerate(bar):
            view, title_view = _texts_for(train, idx, cfg, rng)
            with torch.autocast("cuda", enabled=use_amp):
                inputs = _step_inputs(tower, train, feats.get("train"), idx, view, title_view, cfg, device)
                zi, zt, za, zti = model_for_step(*inputs)
                scale = tower.model.logit_scale.exp()
                extra = (module.bias(),) if cfg.loss == "siglip" else ()
                loss = loss_fn(zi, zt, scale, *extra)
                if cfg.text_text_weight > 0 and za is not None:
                    loss = loss + cfg.text_text_weight * loss_fn(za, zti, scale, *extra)
                if label_ids is not None:
                    targets = torch.from_numpy(label_ids[idx]).to(device)
                    loss = loss + cfg.label_loss_weight * module.label_loss(zi, targets)
            scaler.scale(loss / cfg.grad_accum_steps).backward()
            if (step + 1) % cfg.grad_accum_steps == 0 or step + 1 == len(batches):
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                with torch.no_grad():  # as in CLIP: the temperature is clamped to at most 100
                    tower.model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                                  "lr": scheduler.get_last_lr()[0]}
        if d.main:
            metrics, weights = evaluate_split(val, _embed(tower, val, val_q, feats.get("val"), val_qf), val_qrels)
            record.update({f"val_{k}": v for k, v in metrics.items()})
            score = score_summary(metrics)
            if score > best["score"]:
                best = {"score": score, "epoch": epoch + 1, "metrics": metrics, "weights": weights,
                        "state": _state(module, cfg)}
            history.append(record)
            if log_epoch is not None:
                log_epoch(epoch + 1, record)
            _atomic_torch_save({"module": _state(module, cfg), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history,
                                "best": best, "config_digest": cfg.digest(), "torch_rng": torch.get_rng_state()},
                               ckpt)
    timings["train_s"] = round(time.perf_counter() - t_train, 1)
    if not d.main:
        return {"rank": d.rank}

    module.load_state_dict(best["state"], strict=not cfg.precompute_features)
    bundle = tower.save(out_dir / "bundle", meta={"run_id": run_id, "train_config": cfg.model_dump(mode="json"),
                                                  "best_epoch": best["epoch"], "fusion_weights": best["weights"],
                                                  "val_metrics": best["metrics"]})
    result = {
        "run_id": run_id, "config": cfg.model_dump(mode="json"), "config_digest": cfg.digest(),
        "model": cfg.model, "device": device, "world_size": d.world, "bundle": str(bundle),
        "data": {"pairs_dir": str(pairs_dir), "source": cfg.data_source, "train_products": len(train),
                 "val_products": len(val), "val_queries": len(val_q),
                 "queries": "attribute-derived (gender colour article-type), not real shopper queries"},
        "label_classes": {f: len(names) for f, names in label_classes.items()},
        "best_epoch": best["epoch"], "fusion_weights": best["weights"], "history": history,
        "val": {"trained": best["metrics"], "untrained_projections": base_val},
        "timings": {**timings, "total_s": round(time.perf_counter() - started, 1)},
    }
    (out_dir / "train.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    return result


def evaluate_two_tower(settings: Settings, cfg: TwoTowerTrainConfig, *, bundle: Path, pairs_dir: Path
                       ) -> dict[str, Any]:
    """Score a trained bundle on the **test** split against the named baselines.

    Baselines: the untrained projections (the model rebuilt from its spec with the same seed,
    exactly as training started) and text-only MiniLM over titles. Fusion weights of each model
    are chosen on the validation split and then applied unchanged to the test split.
    """
    from skulens.data.catalog import read_table
    from skulens.training.features import image_trunk_features, split_features

    started = time.perf_counter()
    device = _device(cfg)
    cache_dir = settings.home / "cache" / "models"
    products_table = read_table(settings, "fashion", "products")
    val = load_split(pairs_dir, products_table, "val", cfg.data_source).subset(cfg.max_eval_products, cfg.seed)
    test = load_split(pairs_dir, products_table, "test", cfg.data_source).subset(cfg.max_eval_products, cfg.seed + 1)
    val_q, val_qrels = attribute_queries(val, cfg.max_eval_queries, cfg.seed)
    test_q, test_qrels = attribute_queries(test, cfg.max_eval_queries, cfg.seed + 1)
    feature_cache = settings.home / "cache" / "features"

    def score(tower: TwoTower) -> tuple[dict[str, float], dict[str, float]]:
        vf = split_features(tower, val, feature_cache) if cfg.precompute_features else None
        tf = split_features(tower, test, feature_cache) if cfg.precompute_features else None
        _, weights = evaluate_split(val, _embed(tower, val, val_q, vf), val_qrels)
        metrics, _ = evaluate_split(test, _embed(tower, test, test_q, tf), test_qrels, weights)
        return metrics, weights

    trained, trained_w = score(TwoTower.load(bundle, cache_dir=cache_dir, device=device))
    _seed_everything(cfg.seed)
    untrained_tower = TwoTower.build(cfg.model, cache_dir=cache_dir, device=device)
    untrained, _ = score(untrained_tower)
    minilm, _ = evaluate_split(test, minilm_embeddings(test, test_q), test_qrels)
    test_metrics = {"trained": trained, "untrained_projections": untrained, "text_only_minilm": minilm}
    if untrained_tower.spec.separable_towers:
        # Photo -> photo before any training: the image trunk's own pooled features (ImageNet
        # weights for the packaged Lite0), no projection at all; cached with the split's features.
        trunk = (split_features(untrained_tower, test, feature_cache).images if cfg.precompute_features
                 else image_trunk_features(untrained_tower, test.images, cache_dir=cache_dir))
        if untrained_tower.spec.colour_branch:  # the trunk's own features, without the colour histogram
            from skulens.models.colour_tower import COLOUR_DIMS

            trunk = trunk[:, :-COLOUR_DIMS]
        test_metrics["imagenet_trunk"] = photo_to_photo(test, trunk)
    # The text reference: each product's display name, TF-IDF, finds the products of the same type and
    # colour (titles usually name both); it ranks by words, not pixels, so it is a reference, not a bar.
    test_metrics["tfidf_display_names"] = photo_to_photo(test, tfidf_vectors(test.titles))
    result = {"bundle": str(bundle), "fusion_weights": trained_w, "test": test_metrics,
              "lift": lift_table(test_metrics),
              "data": {"test_products": len(test), "test_queries": len(test_q),
                       "queries": "attribute-derived (gender colour article-type), not real shopper queries"},
              "seconds": round(time.perf_counter() - started, 1)}
    (Path(bundle).parent / "evaluation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def _step_inputs(tower: TwoTower, train: ProductSet, feats, idx: np.ndarray, view: np.ndarray,  # noqa: ANN001
                 title_view: np.ndarray, cfg: TwoTowerTrainConfig, device: str) -> tuple:
    import torch

    want_pair = cfg.text_text_weight > 0
    if feats is not None:
        views = np.stack([feats.titles[idx], feats.degraded_titles[idx], feats.attribute_texts[idx]])
        text = views[view, np.arange(len(idx))]
        title = views[title_view, np.arange(len(idx))]
        out = [torch.from_numpy(feats.images[idx]), torch.from_numpy(text)]
        if want_pair:
            out += [torch.from_numpy(feats.attribute_texts[idx]), torch.from_numpy(title)]
        return tuple(t.to(device) for t in out)
    columns = (train.titles, train.degraded_titles, train.attribute_texts)
    texts = [columns[v][i] for v, i in zip(view, idx, strict=True)]
    images = torch.stack([tower.load_image(train.images[i]) for i in idx]).to(device)
    out = [images, tower.tokenize(texts)]
    if want_pair:
        out += [tower.tokenize([train.attribute_texts[i] for i in idx]),
                tower.tokenize([columns[v][i] for v, i in zip(title_view, idx, strict=True)])]
    return tuple(out)


LIFT_ROWS = (
    ("image-only index (no titles): text→image nDCG@10", "image_only_nDCG@10", "untrained_projections"),
    ("degraded titles: fused vs text-only MiniLM nDCG@10", "degraded_title_fused_nDCG@10", "text_only_minilm"),
    ("full titles: fused vs text-only MiniLM nDCG@10", "full_title_fused_nDCG@10", "text_only_minilm"),
    ("title→own photo recall@10", "t2i_R@10", "untrained_projections"),
    ("photo→photo precision@10 (same type+colour)", "i2i_P@10", "untrained_projections"),
    ("photo→photo precision@10 (same type+colour) vs the trunk's own features", "i2i_P@10", "imagenet_trunk"),
    ("photo→photo precision@10 (same type) vs the trunk's own features", "i2i_P@10_type", "imagenet_trunk"),
    ("photo→photo precision@10 (same type+colour) vs TF-IDF display names (text reference)", "i2i_P@10",
     "tfidf_display_names"),
    ("photo→photo precision@10 (same type) vs TF-IDF display names (text reference)", "i2i_P@10_type",
     "tfidf_display_names"),
)


def lift_table(test: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Before/after rows on the test split, each against its named baseline."""
    rows = []
    for label, metric, baseline in LIFT_ROWS:
        if baseline not in test:
            continue  # a baseline the model cannot have (no separable image trunk)
        base_metric = metric.replace("_fused_", "_text_") if baseline == "text_only_minilm" else metric
        before = test[baseline].get(base_metric)
        after = test["trained"].get(metric)
        rows.append({"setting": label, "metric": metric, "baseline": baseline, "baseline_metric": base_metric,
                     "before": before, "after": after,
                     "delta": None if before is None or after is None else after - before})
    return rows
