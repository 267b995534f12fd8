"""Model specs: every built-in spec validates; bad specs get readable errors; user folders add specs."""

from __future__ import annotations

import json

import pytest

from skulens.models import get_spec, list_specs, register_spec_dir
from skulens.models import registry as reg
from skulens.settings import ConfigError


def test_builtin_specs_validate():
    names = list_specs()
    assert {"skulens-offline", "skulens-tiny", "vit-l-14"} <= set(names)
    for name in names:
        spec = get_spec(name)
        assert spec.name == name and spec.description


def test_offline_spec_is_the_packaged_two_tower():
    spec = get_spec("skulens-offline")
    assert spec.separable_towers and spec.pretrained is None
    assert spec.model_cfg["text_cfg"]["hf_model_name"] == "@packaged:all-minilm-l6-v2"
    assert spec.image_tower_weights == "@packaged:efficientnet-lite0"
    assert spec.preprocess.mean == (0.5, 0.5, 0.5)


def test_production_weights_come_from_the_environment(monkeypatch):
    assert get_spec("vit-l-14").pretrained == "openai"
    monkeypatch.setenv("SKULENS_VIT_L_14_WEIGHTS", "/models/vit-l-14.pt")
    assert get_spec("vit-l-14").pretrained == "/models/vit-l-14.pt"


def test_unknown_and_invalid_specs_are_named(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        get_spec("nope")
    (tmp_path / "broken.json").write_text(json.dumps({"architecture": "ViT-B-32", "model_cfg": {}}))
    monkeypatch.setenv("SKULENS_MODEL_CONFIGS", str(tmp_path))
    with pytest.raises(ConfigError, match=r"(?s)broken.json: invalid model spec.*exactly one"):
        get_spec("broken")


def test_user_spec_folder(tmp_path, monkeypatch):
    (tmp_path / "mine.json").write_text(json.dumps({"description": "a user model", "architecture": "ViT-B-16",
                                                    "pretrained": "/weights/b16.pt"}))
    monkeypatch.setattr(reg, "_EXTRA_DIRS", [])
    register_spec_dir(tmp_path)
    assert get_spec("mine").pretrained == "/weights/b16.pt"
    with pytest.raises(ConfigError, match="does not exist"):
        register_spec_dir(tmp_path / "missing")


def test_separable_towers_need_timm_and_hf():
    with pytest.raises(ValueError, match="separable_towers"):
        reg.ModelSpec(name="x", model_cfg={"vision_cfg": {"layers": 2}, "text_cfg": {}}, separable_towers=True)
