"""Named two-tower model specs, one JSON file each (like open_clip's ``model_configs``).

A spec names either an open_clip ``architecture`` (``ViT-L-14``) with a ``pretrained`` tag or
checkpoint, or a full open_clip ``model_cfg`` (registered with open_clip at build time), plus the
image preprocessing and, optionally, weights for the image tower. Strings starting with
``@packaged:`` name offline weights from installed packages (:mod:`skulens.models.packaged`);
``${VAR:-default}`` reads the environment. Users add their own specs with
:func:`register_spec_dir` or the ``SKULENS_MODEL_CONFIGS`` path list.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from skulens.settings import ConfigError, interpolate_env

_BUILTIN = Path(__file__).with_name("configs")
_EXTRA_DIRS: list[Path] = []


class Preprocess(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    size: int = Field(224, ge=16)


class ModelSpec(BaseModel):
    """One named model: how to build it and how to feed it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    architecture: str | None = None
    model_cfg: dict[str, Any] | None = None
    pretrained: str | None = None
    image_tower_weights: str | None = None
    preprocess: Preprocess | None = None
    # True when the towers are a frozen trunk + a projection head that can be split (timm image
    # trunk, HF text transformer): then frozen-trunk features can be precomputed for fast training.
    separable_towers: bool = False
    # A colour histogram of the product region appended to the image trunk's features
    # (:mod:`skulens.models.colour_tower`); ``colour_scale`` is its L2 norm next to the trunk's.
    colour_branch: Literal["lab_l4ab8"] | None = None
    colour_scale: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.architecture is None) == (self.model_cfg is None):
            raise ValueError("give exactly one of 'architecture' (an open_clip name) or 'model_cfg'")
        if self.separable_towers and self.model_cfg is not None:
            vision, text = self.model_cfg.get("vision_cfg", {}), self.model_cfg.get("text_cfg", {})
            if "timm_model_name" not in vision or "hf_model_name" not in text:
                raise ValueError("separable_towers needs a timm image tower and an HF text tower")
        if self.colour_branch and not self.separable_towers:
            raise ValueError("colour_branch needs separable towers (a timm image trunk with a linear projection)")
        return self

    @property
    def open_clip_name(self) -> str:
        return self.architecture or self.name


def register_spec_dir(path: str | Path) -> None:
    """Add a folder of ``<name>.json`` specs; later folders override earlier ones by name."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"model config folder {folder} does not exist")
    _EXTRA_DIRS.append(folder)


def _spec_dirs() -> list[Path]:
    env = [Path(p) for p in os.environ.get("SKULENS_MODEL_CONFIGS", "").split(os.pathsep) if p]
    return [_BUILTIN, *_EXTRA_DIRS, *env]


def _spec_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for folder in _spec_dirs():
        for path in sorted(folder.glob("*.json")):
            files[path.stem] = path
    return files


def list_specs() -> list[str]:
    """Names of every known model spec."""
    return sorted(_spec_files())


def get_spec(name: str) -> ModelSpec:
    """The spec called ``name``, validated; ConfigError names the file and the problem."""
    files = _spec_files()
    if name not in files:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(files))}")
    path = files[name]
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw = interpolate_env(raw, str(path))
        return ModelSpec(name=name, **raw)
    except (json.JSONDecodeError, ValidationError, TypeError) as exc:
        raise ConfigError(f"{path}: invalid model spec: {exc}") from exc
