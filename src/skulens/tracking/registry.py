"""MLflow runs, registered versions, the ``challenger``/``champion`` aliases and the promotion gate.

Every training run logs parameters, per-epoch metrics, the model (a pyfunc wrapping the bundle)
and a model card. Registering makes a new version of ``skulens-embedder`` or
``skulens-reranker`` and points ``challenger`` at it. :func:`promote_if_better` moves
``champion`` only when every gate rule of ``models.gate`` in the configuration passes against
the current champion's logged metrics; otherwise the champion is untouched and the version is
tagged with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from skulens.settings import GateRule, Settings

CHALLENGER, CHAMPION = "challenger", "champion"


def _quiet() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def client(settings: Settings):  # noqa: ANN201 - mlflow.MlflowClient
    """A client bound to the configured tracking store (SQLite under SKULENS_HOME by default)."""
    _quiet()
    import mlflow

    uri = settings.mlflow.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(settings: Settings, name: str | None = None) -> str:
    """The experiment's id, created with the configured artifact location if missing."""
    mlc = client(settings)
    name = name or settings.mlflow.experiment
    existing = mlc.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = settings.mlflow.artifact_location
    if "://" not in location:
        Path(location).mkdir(parents=True, exist_ok=True)
        location = Path(location).resolve().as_uri()
    return mlc.create_experiment(name, artifact_location=location)


def flatten_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:500]
    return out


def safe_metric_name(name: str) -> str:
    """MLflow metric names allow alphanumerics and ``_-./ :``: ``nDCG@10`` is logged as ``nDCG_at_10``."""
    return "".join(c if c.isalnum() or c in "_-./ :" else "_" for c in name.replace("@", "_at_"))


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def model_card(title: str, *, data: dict[str, Any], metrics: dict[str, Any], config: dict[str, Any],
               notes: tuple[str, ...] = ()) -> str:
    """A short Markdown model card: data, metrics, config and its hash."""
    lines = [f"# {title}", "", "## Data"] + [f"- {k}: {v}" for k, v in data.items()]
    lines += ["", "## Held-out metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    lines += ["", f"## Config (hash {config_hash(config)})", "", "```json", json.dumps(config, indent=2), "```"]
    if notes:
        lines += ["", "## Notes"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def log_and_register(settings: Settings, *, kind: str, run_name: str, params: dict[str, Any],
                     history: list[dict[str, Any]], final_metrics: dict[str, float], artifacts: dict[str, str],
                     card: str, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """One MLflow run: params, per-epoch metrics, final metrics, model + card; register a version
    of the ``kind`` model ("embedder", "reranker", "ranker" or "text_encoder") and point
    ``challenger`` at it."""
    _quiet()
    import mlflow

    from skulens.tracking.pyfunc import EmbedderModel, RankerModel, RerankerModel, TextEncoderModel

    mlc = client(settings)
    name = getattr(settings.models, kind)
    python_model = {"embedder": EmbedderModel, "reranker": RerankerModel, "ranker": RankerModel,
                    "text_encoder": TextEncoderModel}[kind]()
    with mlflow.start_run(experiment_id=experiment_id(settings), run_name=run_name, tags=tags or {}) as run:
        mlflow.log_params(flatten_params(params))
        for record in history:
            step = int(record.get("epoch", 0))
            mlflow.log_metrics({safe_metric_name(k): float(v) for k, v in record.items()
                                if k != "epoch" and isinstance(v, (int, float))}, step=step)
        mlflow.log_metrics({safe_metric_name(k): float(v) for k, v in final_metrics.items()})
        mlflow.log_text(card, "model_card.md")
        info = mlflow.pyfunc.log_model(name="model", python_model=python_model, artifacts=artifacts,
                                       pip_requirements=["skulens[ml]"])
        run_id = run.info.run_id
    _ensure_registered(mlc, name)
    # model_id: an MLflow tracking server refuses a ``models:/m-...`` source without it (the local
    # SQLite store accepts it), so registration works against both.
    version = mlc.create_model_version(name, source=info.model_uri, run_id=run_id, description=card,
                                       model_id=getattr(info, "model_id", None))
    mlc.set_registered_model_alias(name, CHALLENGER, version.version)
    return {"name": name, "version": int(version.version), "run_id": run_id, "model_uri": info.model_uri}


def _ensure_registered(mlc, name: str) -> None:  # noqa: ANN001
    from mlflow.exceptions import MlflowException

    try:
        mlc.get_registered_model(name)
    except MlflowException:
        mlc.create_registered_model(name, description=f"skulens {name}")


def alias_version(settings: Settings, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client(settings).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def version_metrics(settings: Settings, name: str, version: int) -> dict[str, float]:
    mlc = client(settings)
    mv = mlc.get_model_version(name, str(version))
    return dict(mlc.get_run(mv.run_id).data.metrics)


@dataclass
class GateDecision:
    """What the promotion gate decided, and why."""

    name: str
    challenger: int
    champion_before: int | None
    promoted: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def champion_after(self) -> int | None:
        return self.challenger if self.promoted else self.champion_before

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "champion_after": self.champion_after}


def decide_promotion(rules: list[GateRule], challenger: dict[str, float], champion: dict[str, float] | None
                     ) -> tuple[bool, list[str], list[dict[str, Any]]]:
    """Pure gate logic: every rule must pass (floor, at most ``max_drop`` below the champion, and
    more than ``min_margin`` above every baseline the rule names, as the challenger's run measured
    them on the same held-out data). A baseline the run did not log fails the rule: a gate without
    its baseline is not a gate."""
    reasons, checks = [], []

    def logged(metrics: dict[str, float] | None, name: str) -> float | None:
        return None if metrics is None else metrics.get(safe_metric_name(name), metrics.get(name))

    for rule in rules:
        value, base = logged(challenger, rule.metric), logged(champion, rule.metric)
        baselines = {name: logged(challenger, name) for name in rule.beats}
        check = {"metric": rule.metric, "challenger": value, "champion": base, "min": rule.min,
                 "max_drop": rule.max_drop, "baselines": baselines, "min_margin": rule.min_margin, "passed": True}
        failed = []
        if value is None:
            failed.append(f"{rule.metric}: not logged by the challenger")
        else:
            if value < rule.min:
                failed.append(f"{rule.metric}: {value:.4f} is below the floor {rule.min:.4f}")
            if base is not None and value < base - rule.max_drop:
                failed.append(f"{rule.metric}: {value:.4f} is more than {rule.max_drop:.4f} below champion {base:.4f}")
            for name, score in baselines.items():
                if score is None:
                    failed.append(f"{rule.metric}: baseline {name} was not measured")
                elif value <= score + rule.min_margin:
                    failed.append(f"{rule.metric}: {value:.4f} does not beat baseline {name} {score:.4f}"
                                  + (f" by more than {rule.min_margin:.4f}" if rule.min_margin else ""))
        check["passed"] = not failed
        reasons += failed
        checks.append(check)
    return not reasons, reasons, checks


def promote_if_better(settings: Settings, kind: str, version: int) -> GateDecision:
    """Run the gate of ``kind`` for ``version``; move ``champion`` only if it passes."""
    name = getattr(settings.models, kind)
    mlc = client(settings)
    champion = alias_version(settings, name, CHAMPION)
    champion_metrics = version_metrics(settings, name, champion) if champion is not None else None
    passed, reasons, checks = decide_promotion(settings.models.gate.get(kind, []),
                                               version_metrics(settings, name, version), champion_metrics)
    decision = GateDecision(name, version, champion, passed, reasons, checks)
    if champion == version:
        decision.reasons = ["already champion"]
    elif passed:
        mlc.set_registered_model_alias(name, CHAMPION, str(version))
        mlc.set_model_version_tag(name, str(version), "gate", "promoted")
        # What a canary rollback of this version restores (skulens.pipelines.canary).
        mlc.set_model_version_tag(name, str(version), "champion_before", str(champion or ""))
    else:
        mlc.set_model_version_tag(name, str(version), "gate", "refused: " + "; ".join(reasons)[:4000])
    return decision


def attach_export(settings: Settings, kind: str, version: int, decision: dict[str, Any]) -> None:
    """Log the export decision and the served ONNX files into the version's run; tag the version."""
    name = getattr(settings.models, kind)
    mlc = client(settings)
    mv = mlc.get_model_version(name, str(version))
    mlc.log_text(mv.run_id, json.dumps(decision, indent=2, default=str), "onnx/export.json")
    served = decision["served"]
    for path in (served.values() if isinstance(served, dict) else [served] if served else []):
        mlc.log_artifact(mv.run_id, path, "onnx")
    int8 = decision["int8_served"]
    mlc.set_model_version_tag(name, str(version), "int8_parity",
                              "passed" if (all(int8.values()) if isinstance(int8, dict) else int8) else "rejected")
    if decision.get("reasons"):
        mlc.set_model_version_tag(name, str(version), "int8_reasons", "; ".join(decision["reasons"])[:4000])


def version_artifacts(settings: Settings, kind: str, alias: str = CHAMPION, version: int | None = None
                      ) -> dict[str, Any]:
    """Local paths of the version behind ``alias`` (or of ``version``): its model files and its
    served ONNX artefacts.

    Returns ``{"name", "version", "run_id", "model_dir", "onnx_dir", "export"}``; ``onnx_dir`` and
    ``export`` are None when the version was not exported. Raises LookupError without that alias
    or version."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    name = getattr(settings.models, kind)
    mlc = client(settings)
    try:
        mv = mlc.get_model_version(name, str(version)) if version is not None else \
            mlc.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        which = f"version {version}" if version is not None else f"version with alias {alias!r}"
        raise LookupError(f"registered model {name} has no {which}; "
                          "run the train_and_export pipeline first") from exc
    local = settings.home / "cache" / "registry" / name / f"v{mv.version}"
    (local / "model").mkdir(parents=True, exist_ok=True)
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}",
                                                         dst_path=str(local / "model")))
    onnx_dir, export = None, None
    try:
        onnx_dir = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="onnx",
                                                            dst_path=str(local)))
        export = json.loads((onnx_dir / "export.json").read_text(encoding="utf-8"))
    except (MlflowException, OSError):
        onnx_dir = None
    return {"name": name, "version": int(mv.version), "run_id": mv.run_id, "model_dir": model_dir,
            "onnx_dir": onnx_dir, "export": export}


def embedder_files(artifacts: dict[str, Any]) -> tuple[Path, Path | None]:
    """(bundle folder, served ONNX image tower or None) of an embedder from :func:`version_artifacts`."""
    return artifacts["model_dir"] / "artifacts" / "bundle", embedder_onnx(artifacts, "image")


def embedder_onnx(artifacts: dict[str, Any], tower: str) -> Path | None:
    """The served ONNX file of an embedder's ``text`` or ``image`` tower (INT8 when it passed parity)."""
    if not (artifacts["export"] and artifacts["onnx_dir"]):
        return None
    served = artifacts["export"]["served"].get(tower)
    path = artifacts["onnx_dir"] / Path(served).name if served else None
    return path if path is not None and path.is_file() else None


def reranker_dir(artifacts: dict[str, Any]) -> Path:
    """The cross-encoder folder of a reranker from :func:`version_artifacts`."""
    return artifacts["model_dir"] / "artifacts" / "model"


def text_encoder_dir(artifacts: dict[str, Any]) -> Path:
    """The sentence-transformers folder of a text encoder from :func:`version_artifacts`."""
    return artifacts["model_dir"] / "artifacts" / "model"


def text_encoder_onnx(artifacts: dict[str, Any]) -> Path | None:
    """The served ONNX file of a text encoder (INT8 when it passed the parity gate), or None."""
    if not (artifacts["export"] and artifacts["onnx_dir"] and artifacts["export"].get("served")):
        return None
    path = artifacts["onnx_dir"] / Path(artifacts["export"]["served"]).name
    return path if path.is_file() else None


def text_encoder_champion(settings: Settings) -> dict[str, Any] | None:
    """The text-encoder champion's artefacts when ``retrieval.text_encoder`` is ``champion`` and a
    version passed its gate; else None (the two-tower's text tower serves)."""
    if settings.retrieval.text_encoder != "champion":
        return None
    try:
        return version_artifacts(settings, "text_encoder")
    except LookupError:
        return None


def served_text_encoder(artifacts: dict[str, Any]) -> tuple[Any, str]:
    """(encoder, label) of a text-encoder version as served: its ONNX file that passed parity, else
    the sentence-transformers folder on PyTorch."""
    from skulens.retrieval.encoders import text_encoder_from_files

    onnx = text_encoder_onnx(artifacts)
    label = f"{artifacts['name']}/{artifacts['version']}" + (f" ({onnx.stem})" if onnx else "")
    return text_encoder_from_files(text_encoder_dir(artifacts), onnx), label


def reranker_onnx(artifacts: dict[str, Any]) -> Path | None:
    """The served ONNX file of a reranker (INT8 when it passed the parity gate), or None."""
    if not (artifacts["export"] and artifacts["onnx_dir"]):
        return None
    path = artifacts["onnx_dir"] / Path(artifacts["export"]["served"]).name
    return path if path.is_file() else None
