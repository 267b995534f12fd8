"""The stages of the ``train_and_export`` pipeline (the DAG of the same name wires them).

Embedder: train_embedder -> evaluate_embedder -> register_embedder (challenger) -> export_embedder
(ONNX + INT8 + parity) -> gate_embedder (champion or refused). Reranker: the same five stages.
Text encoder (the dense text side of text-only catalogues; only when ``text_encoder_config`` is set):
train_text_encoder (evaluates against its baselines as it trains) -> register -> export (ONNX + INT8 +
parity) -> gate.
``report`` writes ``SKULENS_HOME/reports/train_and_export/latest.json`` with the before/after
metrics, parity figures, gate decisions and registered versions, also when a stage failed.

Stages hand results to each other through the run log (:mod:`skulens.pipelines.runlog`), so any
stage can be re-run alone for the same run id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from skulens.pipelines.runlog import finish, raise_if_failed, stage, stage_result
from skulens.settings import Settings
from skulens.storage.layout import pairs_dir

PIPELINE = "train_and_export"
EMBEDDER_STAGES = ["train_embedder", "evaluate_embedder", "register_embedder", "export_embedder", "gate_embedder"]
RERANKER_STAGES = ["train_reranker", "evaluate_reranker", "register_reranker", "export_reranker", "gate_reranker"]
TEXT_ENCODER_STAGES = ["train_text_encoder", "register_text_encoder", "export_text_encoder", "gate_text_encoder"]
STAGES = EMBEDDER_STAGES + RERANKER_STAGES + TEXT_ENCODER_STAGES


@dataclass
class TrainParams:
    """What a run trains (DAG params / CLI options)."""

    config: str = "offline"
    epochs: int | None = None
    max_train_products: int | None = None
    reranker_config: str = "reranker"
    reranker_max_train_pairs: int | None = None
    # The fine-tuned dense text side (configs/training/text-encoder.yaml); None: not trained.
    text_encoder_config: str | None = None
    parity_texts: int = 1024
    parity_images: int = 1024  # photos are cheap; one query is 1/n of recall@10


def _previous(settings: Settings, run_id: str, name: str) -> dict[str, Any]:
    return stage_result(settings, PIPELINE, run_id, name)




def _two_tower_config(settings: Settings, params: TrainParams):  # noqa: ANN202
    from skulens.training.config import load_train_config

    return load_train_config(params.config, settings, {"epochs": params.epochs,
                                                       "max_train_products": params.max_train_products})


def _reranker_config(settings: Settings, params: TrainParams):  # noqa: ANN202
    from skulens.training.reranker import load_reranker_config

    return load_reranker_config(params.reranker_config, settings,
                                {"max_train_pairs": params.reranker_max_train_pairs})


def _run_dir(settings: Settings, kind: str, run_id: str) -> Path:
    return settings.home / "training" / kind / run_id


# -- embedder --------------------------------------------------------------------------------
def train_embedder(settings: Settings, run_id: str, params: TrainParams) -> dict[str, Any]:
    from skulens.training.two_tower import train_two_tower

    with stage(settings, PIPELINE, run_id, "train_embedder") as out:
        cfg = _two_tower_config(settings, params)
        pairs = pairs_dir(settings)
        out.update(train_two_tower(settings, cfg, pairs_dir=pairs, run_id=run_id,
                                   out_dir=_run_dir(settings, "embedder", run_id)))
        out["params"] = asdict(params)
        return out


def evaluate_embedder(settings: Settings, run_id: str, params: TrainParams) -> dict[str, Any]:
    from skulens.training.two_tower import evaluate_two_tower

    with stage(settings, PIPELINE, run_id, "evaluate_embedder") as out:
        trained = _previous(settings, run_id, "train_embedder")
        out.update(evaluate_two_tower(settings, _two_tower_config(settings, params), bundle=Path(trained["bundle"]),
                                      pairs_dir=Path(trained["data"]["pairs_dir"])))
        return out


def _final_metrics(test: dict[str, dict[str, float]], prefixes: dict[str, str]) -> dict[str, float]:
    return {f"{prefix}{metric}": value for group, prefix in prefixes.items()
            for metric, value in test.get(group, {}).items() if isinstance(value, (int, float))}


def register_embedder(settings: Settings, run_id: str, params: TrainParams) -> dict[str, Any]:
    from skulens.tracking.registry import log_and_register, model_card

    with stage(settings, PIPELINE, run_id, "register_embedder") as out:
        trained = _previous(settings, run_id, "train_embedder")
        evaluated = _previous(settings, run_id, "evaluate_embedder")
        metrics = _final_metrics(evaluated["test"], {"trained": "test_", "untrained_projections": "baseline_untrained_",
                                                     "text_only_minilm": "baseline_minilm_",
                                                     "imagenet_trunk": "baseline_imagenet_trunk_",
                                                     "tfidf_display_names": "reference_tfidf_names_"})
        card = model_card(
            f"skulens-embedder ({trained['model']}, run {run_id})",
            data={**trained["data"], **evaluated["data"]},
            metrics={k: v for k, v in metrics.items() if not k.endswith("fusion_weight")},
            config=trained["config"],
            notes=("Fashion metrics use attribute-derived queries, not real shopper queries.",
                   f"Best validation epoch {trained['best_epoch']}; fusion weights {evaluated['fusion_weights']}."))
        out.update(log_and_register(
            settings, kind="embedder", run_name=f"embedder-{run_id}", params=trained["config"],
            history=trained["history"], final_metrics=metrics, artifacts={"bundle": trained["bundle"]}, card=card,
            tags={"skulens.pipeline_run": run_id, "skulens.config_digest": trained["config_digest"]}))
        return out


def export_embedder(settings: Settings, run_id: str, params: TrainParams) -> dict[str, Any]:
    from skulens.data.catalog import read_table
    from skulens.data.pairs import load_split
    from skulens.export.parity import export_embedder as export
    from skulens.models.onnx import configure
    from skulens.tracking.registry import attach_export

    configure(settings.models.onnx_device)  # parity is measured on the provider that will serve
    with stage(settings, PIPELINE, run_id, "export_embedder") as out:
        trained = _previous(settings, run_id, "train_embedder")
        registered = _previous(settings, run_id, "register_embedder")
        cfg = _two_tower_config(settings, params)
        pairs, products = Path(trained["data"]["pairs_dir"]), read_table(settings, "fashion", "products")
        test = load_split(pairs, products, "test", cfg.data_source).subset(params.parity_texts, cfg.seed + 2)
        calib = load_split(pairs, products, "train", cfg.data_source).subset(64, cfg.seed + 3)
        n = min(len(test), params.parity_images)
        decision = export(Path(trained["bundle"]), _run_dir(settings, "embedder", run_id) / "onnx",
                          texts=test.titles[:n], images=test.images[:n], calibration_images=calib.images,
                          parity=settings.models.parity, cache_dir=settings.home / "cache" / "models")
        attach_export(settings, "embedder", registered["version"], decision)
        out.update(decision)
        return out


def _gate(settings: Settings, run_id: str, kind: str) -> dict[str, Any]:
    from skulens.tracking.registry import promote_if_better

    with stage(settings, PIPELINE, run_id, f"gate_{kind}") as out:
        registered = _previous(settings, run_id, f"register_{kind}")
        out.update(promote_if_better(settings, kind, registered["version"]).to_dict())
        return out


def gate_embedder(settings: Settings, run_id: str, params: TrainParams) -> dict[str, Any]:
    return _gate(settings, run_id, "embedder")


# -- reranker --------------------------------------------------------------------------------
def train_reranker(settings: Settings, run_id: str, params: TrainParams) -> dict[str, Any]:
    from skulens.training.reranker import train_reranker as train

    with stage(settings, PIPELINE, run_id, "train_reranker") as out:
        pairs = pairs_dir(settings)
        out.update(train(settings, _reranker_config(settings, params), pairs_dir=pairs, run_id=run_id,
                         out_dir=_run_dir(settings, "reranker", run_id)))
        out["pairs_dir"] = str(pairs)
        return out


def evaluate_reranker(settings: Settings, run_id: str, params: TrainParams) -> dict[str, Any]:
    from skulens.training.reranker import evaluate_reranker as evaluate

    with stage(settings, PIPELINE, run_id, "evaluate_reranker") as out:
        trained = _previous(settings, run_id, "train_reranker")
        out.update(evaluate(settings, _reranker_config(settings, params), model_dir=Path(trained["model_dir"]),
                            pairs_dir=Path(trained["pairs_dir"])))
        return out


def register_reranker(settings: Settings, run_id: str, params: TrainParams) -> dict[str, Any]:
    from skulens.tracking.registry import log_and_register, model_card

    with stage(settings, PIPELINE, run_id, "register_reranker") as out:
        trained = _previous(settings, run_id, "train_reranker")
        evaluated = _previous(settings, run_id, "evaluate_reranker")
        metrics = _final_metrics(evaluated["test"], {"cross_encoder": "test_cross_encoder_", "bm25": "baseline_bm25_",
                                                     "bi_encoder_minilm": "baseline_bi_encoder_"})
        full = evaluated.get("full_corpus", {})
        metrics.update(_final_metrics(full, {"cross_encoder": "test_full_cross_encoder_", "bm25": "baseline_full_bm25_",
                                             "cross_encoder_alone": "test_full_cross_encoder_alone_"}))
        if "blend" in full:
            metrics["test_full_rerank_blend"] = full["blend"]
        card = model_card(f"skulens-reranker (cross-encoder from MiniLM-L6, run {run_id})",
                          data={**trained["data"], **evaluated["data"]}, metrics=metrics, config=trained["config"],
                          notes=("test_*: each held-out query's judged candidates (rerank setting); test_full_*: "
                                 "BM25's top candidates from the whole catalogue, reranked, against BM25's order.",))
        out.update(log_and_register(
            settings, kind="reranker", run_name=f"reranker-{run_id}", params=trained["config"],
            history=trained["history"], final_metrics=metrics, artifacts={"model": trained["model_dir"]}, card=card,
            tags={"skulens.pipeline_run": run_id}))
        return out


def export_reranker(settings: Settings, run_id: str, params: TrainParams) -> dict[str, Any]:
    from skulens.export.parity import export_reranker_gated
    from skulens.models.onnx import configure
    from skulens.tracking.registry import attach_export
    from skulens.training.reranker import test_groups

    configure(settings.models.onnx_device)  # parity is measured on the provider that will serve
    with stage(settings, PIPELINE, run_id, "export_reranker") as out:
        trained = _previous(settings, run_id, "train_reranker")
        registered = _previous(settings, run_id, "register_reranker")
        cfg = _reranker_config(settings, params)
        groups = test_groups(settings, cfg, Path(trained["pairs_dir"]))
        decision = export_reranker_gated(Path(trained["model_dir"]), _run_dir(settings, "reranker", run_id) / "onnx",
                                         groups=groups, parity=settings.models.parity, max_length=cfg.max_length)
        attach_export(settings, "reranker", registered["version"], decision)
        out.update(decision)
        return out


def gate_reranker(settings: Settings, run_id: str, params: TrainParams) -> dict[str, Any]:
    return _gate(settings, run_id, "reranker")


# -- text encoder ----------------------------------------------------------------------------
def train_text_encoder(settings: Settings, run_id: str, params: TrainParams) -> dict[str, Any]:
    from skulens.training.text_encoder import load_text_encoder_config
    from skulens.training.text_encoder import train_text_encoder as train

    with stage(settings, PIPELINE, run_id, "train_text_encoder") as out:
        if params.text_encoder_config is None:
            out["skipped"] = "no text_encoder_config: the dense text side is not retrained in this run"
            return out
        pairs = pairs_dir(settings)
        out.update(train(settings, load_text_encoder_config(params.text_encoder_config, settings), pairs_dir=pairs,
                         run_id=run_id, out_dir=_run_dir(settings, "text_encoder", run_id)))
        out["pairs_dir"] = str(pairs)
        return out


def text_encoder_metrics(test: dict[str, Any]) -> dict[str, float]:
    """The gate's metric names from a text-encoder result's ``test`` block."""
    metrics = {}
    for group, prefix in (("tuned", "test_"), ("packaged_minilm", "baseline_minilm_")):
        for setting in ("dense", "hybrid"):
            metrics.update({f"{prefix}{setting}_{k}": v for k, v in test[group][setting].items()})
        metrics[f"{prefix}fusion_weight"] = test[group]["fusion_weight"]
    metrics.update({f"baseline_bm25_{k}": v for k, v in test["bm25"].items()})
    return metrics


def register_text_encoder(settings: Settings, run_id: str, params: TrainParams) -> dict[str, Any]:
    from skulens.tracking.registry import log_and_register, model_card

    with stage(settings, PIPELINE, run_id, "register_text_encoder") as out:
        trained = _previous(settings, run_id, "train_text_encoder")
        if "skipped" in trained:
            out["skipped"] = trained["skipped"]
            return out
        metrics = text_encoder_metrics(trained["test"])
        card = model_card(f"skulens-text-encoder (MiniLM-L6 fine-tuned on Home Depot queries, run {run_id})",
                          data=trained["data"], metrics=metrics, config=trained["config"],
                          notes=("test_*: held-out real queries over the whole catalogue, dense alone and fused "
                                 "with BM25 (weight learned on validation queries); baseline_minilm_*: the packaged "
                                 "all-MiniLM-L6-v2 measured the same way.",
                                 f"Best validation epoch {trained['best_epoch']}."))
        history = [{"epoch": h["epoch"], "train_loss": h["train_loss"], "val_dense_nDCG@10": h["val_dense_nDCG@10"]}
                   for h in trained["history"]]
        out.update(log_and_register(
            settings, kind="text_encoder", run_name=f"text-encoder-{run_id}", params=trained["config"],
            history=history, final_metrics=metrics, artifacts={"model": trained["model_dir"]}, card=card,
            tags={"skulens.pipeline_run": run_id}))
        return out


def export_text_encoder(settings: Settings, run_id: str, params: TrainParams) -> dict[str, Any]:
    from skulens.export.parity import export_text_encoder_gated
    from skulens.models.onnx import configure
    from skulens.tracking.registry import attach_export
    from skulens.training.text_encoder import held_out_texts, load_text_encoder_config

    configure(settings.models.onnx_device)
    with stage(settings, PIPELINE, run_id, "export_text_encoder") as out:
        registered = _previous(settings, run_id, "register_text_encoder")
        if "skipped" in registered:
            out["skipped"] = registered["skipped"]
            return out
        trained = _previous(settings, run_id, "train_text_encoder")
        cfg = load_text_encoder_config(params.text_encoder_config or trained["config"]["name"], settings)
        decision = export_text_encoder_gated(
            Path(trained["model_dir"]), _run_dir(settings, "text_encoder", run_id) / "onnx",
            texts=held_out_texts(settings, Path(trained["pairs_dir"]), min(params.parity_texts, 512), cfg.seed),
            parity=settings.models.parity, max_length=cfg.max_length)
        attach_export(settings, "text_encoder", registered["version"], decision)
        out.update(decision)
        return out


def gate_text_encoder(settings: Settings, run_id: str, params: TrainParams) -> dict[str, Any]:
    if "skipped" in _previous(settings, run_id, "register_text_encoder"):
        with stage(settings, PIPELINE, run_id, "gate_text_encoder") as out:
            out["skipped"] = "nothing registered in this run"
            return out
    return _gate(settings, run_id, "text_encoder")


# -- whole run -------------------------------------------------------------------------------
def _headline(log: dict[str, Any]) -> dict[str, Any]:
    """Before/after, parity, gates and versions, picked from the stage results of the run log."""
    stages = log["stages"]

    def result(name: str) -> dict[str, Any]:
        return stages.get(name, {}).get("result", {}) or {}

    return {
        "embedder": {
            "lift": result("evaluate_embedder").get("lift"),
            "parity": {k: result("export_embedder").get(k) for k in ("int8_served", "recall@10", "reasons", "served")},
            "registered": {k: result("register_embedder").get(k) for k in ("name", "version")},
            "gate": {k: result("gate_embedder").get(k) for k in ("promoted", "reasons", "champion_after")},
        },
        "reranker": {
            "test": result("evaluate_reranker").get("test"),
            "full_corpus": {k: result("evaluate_reranker").get("full_corpus", {}).get(k)
                            for k in ("bm25", "cross_encoder", "cross_encoder_alone", "blend", "depth")},
            "parity": {k: result("export_reranker").get(k) for k in ("int8_served", "nDCG@10", "score_cosine",
                                                                     "reasons", "served")},
            "registered": {k: result("register_reranker").get(k) for k in ("name", "version")},
            "gate": {k: result("gate_reranker").get(k) for k in ("promoted", "reasons", "champion_after")},
        },
        "text_encoder": {
            "skipped": result("train_text_encoder").get("skipped"),
            "test": result("train_text_encoder").get("test"),
            "registered": {k: result("register_text_encoder").get(k) for k in ("name", "version")},
            "parity": {k: result("export_text_encoder").get(k) for k in ("int8_served", "int8_variant", "served",
                                                                         "fp32_vs_torch_cosine", "reasons")},
            "gate": {k: result("gate_text_encoder").get(k) for k in ("promoted", "reasons", "champion_after")},
        },
    }


def _summarise(settings: Settings, run_id: str) -> dict[str, Any]:
    """Write ``latest.json`` (with the headline figures) and return it."""
    return finish(settings, PIPELINE, run_id, STAGES, enrich=_headline)


def report(settings: Settings, run_id: str) -> dict[str, Any]:
    """Write ``latest.json``; raise if a stage failed or did not run."""
    return raise_if_failed(_summarise(settings, run_id))


def run_all(settings: Settings, run_id: str, params: TrainParams | None = None) -> dict[str, Any]:
    """Run every stage in order in this process (what the DAG does, without Airflow)."""
    params = params or TrainParams()
    steps = [train_embedder, evaluate_embedder, register_embedder, export_embedder, gate_embedder,
             train_reranker, evaluate_reranker, register_reranker, export_reranker, gate_reranker,
             train_text_encoder, register_text_encoder, export_text_encoder, gate_text_encoder]
    try:
        for step in steps:
            step(settings, run_id, params)
    finally:
        summary = _summarise(settings, run_id)
    return raise_if_failed(summary)
