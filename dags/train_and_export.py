"""Airflow DAG ``train_and_export``: train -> evaluate -> register challenger -> export + INT8
parity -> gate -> promote, for the two-tower embedder and the cross-encoder reranker.

Wiring only: each task imports skulens inside its body and calls one stage of
``skulens.pipelines.train_and_export``. Runs when ``catalog_ingest`` publishes new training pairs,
or by hand with params.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task

TRAINING_PAIRS = Asset(name="skulens_training_pairs", uri="file:///skulens/pairs")
CHAMPION_EMBEDDER = Asset(name="skulens_champion_embedder", uri="file:///skulens/models/skulens-embedder")
CHAMPION_RERANKER = Asset(name="skulens_champion_reranker", uri="file:///skulens/models/skulens-reranker")
CHAMPION_TEXT_ENCODER = Asset(name="skulens_champion_text_encoder",
                              uri="file:///skulens/models/skulens-text-encoder")
DRIFT = Asset(name="skulens_drift", uri="file:///skulens/reports/drift")

DOC = """
### train_and_export

For each model (two-tower **embedder**, cross-encoder **reranker**):

1. **train**: the training config named by `config` / `reranker_config` (configs/training/);
2. **evaluate**: held-out test split against named baselines (untrained projections, text-only
   MiniLM; BM25 and the bi-encoder for the reranker);
3. **register**: MLflow run (params, per-epoch metrics, model, model card), new registered version
   with alias `challenger`;
4. **export**: ONNX with dynamic batch, INT8 with ONNX Runtime, parity gate (cosine and recall@10
   drop); a failed parity serves the fp32 ONNX artefact and says why;
5. **gate**: promotion to `champion` only if the gate rules of `models.gate` pass against the
   current champion; a refused challenger leaves the champion untouched.

The dense **text encoder** (param `text_encoder_config`, empty by default) trains, evaluates
against the packaged MiniLM and BM25 over the whole catalogue, registers, exports (ONNX, INT8 behind
the parity gate) and gates the same way.

**report** writes `SKULENS_HOME/reports/train_and_export/latest.json`, also when a stage failed.
"""


def _run_id() -> str:
    return get_current_context()["run_id"].replace(":", "_").replace("+", "_")


def _settings():  # noqa: ANN202 - imported lazily to keep DAG parsing light
    from skulens.settings import load_settings

    return load_settings()


def _params():  # noqa: ANN202
    from skulens.pipelines.train_and_export import TrainParams

    p = get_current_context()["params"]
    return TrainParams(config=p["config"], epochs=p.get("epochs"), max_train_products=p.get("max_train_products"),
                       reranker_config=p["reranker_config"], reranker_max_train_pairs=p.get("reranker_max_train_pairs"),
                       text_encoder_config=p.get("text_encoder_config") or None,
                       parity_texts=p["parity_texts"], parity_images=p["parity_images"])


@dag(
    dag_id="train_and_export",
    doc_md=DOC,
    # New training pairs, or a drift decision of monitor_drift (its asset event names the reason).
    schedule=(TRAINING_PAIRS | DRIFT),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["skulens", "models", "mlflow"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5), "owner": "skulens"},
    params={
        "config": Param("offline", type="string", description="two-tower training config (configs/training/)"),
        "epochs": Param(None, type=["null", "integer"], minimum=1, description="override the config's epochs"),
        "max_train_products": Param(None, type=["null", "integer"], minimum=2, description="train on a subset"),
        "reranker_config": Param("reranker", type="string", description="reranker training config"),
        "reranker_max_train_pairs": Param(None, type=["null", "integer"], minimum=1,
                                          description="override the reranker's training pairs"),
        "text_encoder_config": Param(None, type=["null", "string"],
                                     description="dense text encoder config (e.g. text-encoder); empty: not trained"),
        "parity_texts": Param(512, type="integer", minimum=8, description="held-out texts for the parity gate"),
        "parity_images": Param(256, type="integer", minimum=8, description="held-out photos for the parity gate"),
    },
)
def train_and_export():
    @task
    def train_embedder() -> dict:
        from skulens.pipelines import train_and_export as p

        return {"best_epoch": p.train_embedder(_settings(), _run_id(), _params())["best_epoch"]}

    @task(retries=0)
    def evaluate_embedder(_: dict) -> dict:
        from skulens.pipelines import train_and_export as p

        return {"lift": p.evaluate_embedder(_settings(), _run_id(), _params())["lift"]}

    @task
    def register_embedder(_: dict) -> dict:
        from skulens.pipelines import train_and_export as p

        return {"version": p.register_embedder(_settings(), _run_id(), _params())["version"]}

    @task(retries=0)
    def export_embedder(_: dict) -> dict:
        from skulens.pipelines import train_and_export as p

        return {"int8_served": p.export_embedder(_settings(), _run_id(), _params())["int8_served"]}

    @task(retries=0, outlets=[CHAMPION_EMBEDDER])
    def gate_embedder(_: dict) -> dict:
        from skulens.pipelines import train_and_export as p

        return _only_if_promoted(p.gate_embedder(_settings(), _run_id(), _params()))

    @task
    def train_reranker() -> dict:
        from skulens.pipelines import train_and_export as p

        return {"train_s": p.train_reranker(_settings(), _run_id(), _params())["timings"]["train_s"]}

    @task(retries=0)
    def evaluate_reranker(_: dict) -> dict:
        from skulens.pipelines import train_and_export as p

        return {"test": p.evaluate_reranker(_settings(), _run_id(), _params())["test"]}

    @task
    def register_reranker(_: dict) -> dict:
        from skulens.pipelines import train_and_export as p

        return {"version": p.register_reranker(_settings(), _run_id(), _params())["version"]}

    @task(retries=0)
    def export_reranker(_: dict) -> dict:
        from skulens.pipelines import train_and_export as p

        return {"int8_served": p.export_reranker(_settings(), _run_id(), _params())["int8_served"]}

    @task(retries=0, outlets=[CHAMPION_RERANKER])
    def gate_reranker(_: dict) -> dict:
        from skulens.pipelines import train_and_export as p

        return _only_if_promoted(p.gate_reranker(_settings(), _run_id(), _params()))

    @task
    def train_text_encoder() -> dict:
        from skulens.pipelines import train_and_export as p

        out = p.train_text_encoder(_settings(), _run_id(), _params())
        return {"skipped": out["skipped"]} if "skipped" in out else {"best_epoch": out["best_epoch"]}

    @task
    def register_text_encoder(_: dict) -> dict:
        from skulens.pipelines import train_and_export as p

        return {"version": p.register_text_encoder(_settings(), _run_id(), _params()).get("version")}

    @task(retries=0)
    def export_text_encoder(_: dict) -> dict:
        from skulens.pipelines import train_and_export as p

        return {"int8_served": p.export_text_encoder(_settings(), _run_id(), _params()).get("int8_served")}

    @task(retries=0, outlets=[CHAMPION_TEXT_ENCODER])
    def gate_text_encoder(_: dict) -> dict:
        from skulens.pipelines import train_and_export as p

        decision = p.gate_text_encoder(_settings(), _run_id(), _params())
        return _only_if_promoted({"promoted": False, "reasons": [decision["skipped"]]} if "skipped" in decision
                                 else decision)

    @task(retries=0, trigger_rule="all_done")
    def report() -> dict:
        from skulens.pipelines import train_and_export as p

        return {"status": p.report(_settings(), _run_id())["status"]}

    def _only_if_promoted(decision: dict) -> dict:
        # A refused gate ends its task as skipped: a skipped task emits no asset event, so the
        # index is not rebuilt (nor a canary started) for a champion that did not change.
        if not decision["promoted"]:
            from airflow.exceptions import AirflowSkipException

            raise AirflowSkipException("not promoted: " + "; ".join(decision.get("reasons") or []))
        return {"promoted": True}

    embedder = gate_embedder(export_embedder(register_embedder(evaluate_embedder(train_embedder()))))
    reranker = gate_reranker(export_reranker(register_reranker(evaluate_reranker(train_reranker()))))
    text_encoder = gate_text_encoder(export_text_encoder(register_text_encoder(train_text_encoder())))
    [embedder, reranker, text_encoder] >> report()


train_and_export()
