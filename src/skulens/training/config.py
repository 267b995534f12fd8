"""Typed training configurations, loaded from ``configs/training/<name>.yaml`` (or any YAML path)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from skulens.settings import ConfigError, Settings

M = TypeVar("M", bound=BaseModel)


class TwoTowerTrainConfig(BaseModel):
    """How to train the two-tower model (see configs/training/*.yaml for the documented presets)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "custom"
    model: str
    data_source: Literal["parquet", "shards"] = "parquet"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    loss: Literal["clip", "siglip"] = "clip"
    lock_image: bool = True
    lock_text: bool = True
    unlocked_image_groups: int = Field(0, ge=0)
    unlocked_text_layers: int = Field(0, ge=0)
    precompute_features: bool = True
    text_text_weight: float = Field(0.0, ge=0)
    degrade_title_prob: float = Field(0.0, ge=0, le=1)
    # Auxiliary classification of the photo vector into the catalogue's labels (article type,
    # colour, gender): pulls photos of one type and colour together, which the image-text loss
    # alone leaves to the titles' wording. The classifiers are dropped after training.
    label_loss_weight: float = Field(0.0, ge=0)
    label_fields: list[str] = Field(default_factory=lambda: ["article_type", "colour", "gender"])
    grad_accum_steps: int = Field(1, ge=1)
    seed: int = 13
    max_train_products: int | None = Field(None, ge=2)
    max_eval_products: int | None = Field(None, ge=2)
    max_eval_queries: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _precompute_needs_locked(self) -> TwoTowerTrainConfig:
        if self.precompute_features and not (self.lock_image and self.lock_text
                                             and self.unlocked_image_groups == 0 and self.unlocked_text_layers == 0):
            raise ValueError("precompute_features needs both towers fully locked (lock_image, lock_text, "
                             "no unlocked groups/layers)")
        return self

    def digest(self) -> str:
        """Hash of every field but ``epochs``: a checkpoint resumes only under the same config, and
        raising ``epochs`` continues a finished run."""
        fields = self.model_dump(mode="json", exclude={"epochs"})
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def load_config_file(name_or_path: str, settings: Settings, model: type[M], what: str,
                     overrides: dict[str, Any] | None = None) -> M:
    """``configs/training/<name>.yaml`` or a YAML path, validated as ``model``, with ``overrides``
    (None values ignored) applied; ConfigError names the file and the problem."""
    folder = settings.project_root / "configs" / "training"
    path = Path(name_or_path)
    if not path.suffix:
        path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"{what} config {name_or_path!r} not found ({path}); known: {', '.join(known)}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    raw.setdefault("name", path.stem)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model(**raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid {what} config: {exc}") from exc


def load_train_config(name_or_path: str, settings: Settings, overrides: dict[str, Any] | None = None
                      ) -> TwoTowerTrainConfig:
    """The two-tower training config ``name_or_path`` (see :func:`load_config_file`)."""
    return load_config_file(name_or_path, settings, TwoTowerTrainConfig, "training", overrides)
