"""A built two-tower model: open_clip model + preprocessing + tokenizer, with encode/save/load.

Bundles (``save``/``load``) are a folder with ``weights.pt`` (the full state dict) and
``skulens_model.json`` (the spec and free-form metadata such as the training run). Loading
rebuilds the architecture from the spec, so ``@packaged:`` paths are resolved on the loading
machine and no weights are fetched from anywhere.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skulens.models.packaged import resolve, resolve_tree
from skulens.models.registry import ModelSpec, get_spec
from skulens.settings import ConfigError

BUNDLE_META = "skulens_model.json"
BUNDLE_WEIGHTS = "weights.pt"


class ImageError(ValueError):
    """An image that cannot be decoded or is unsafe to decode (decompression bomb)."""


def import_open_clip():  # noqa: ANN202
    from skulens.compat import ensure_torchvision_ops

    ensure_torchvision_ops()
    import open_clip

    return open_clip


def _register(spec: ModelSpec, cache_dir: Path) -> None:
    """Make ``spec.model_cfg`` known to open_clip under ``spec.open_clip_name``."""
    if spec.model_cfg is None:
        return
    open_clip = import_open_clip()
    folder = cache_dir / "open_clip_configs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.open_clip_name}.json"
    payload = json.dumps(resolve_tree(spec.model_cfg, cache_dir), indent=1)
    if not path.is_file() or path.read_text(encoding="utf-8") != payload:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(payload, encoding="utf-8")
        os.replace(tmp, path)
    open_clip.add_model_config(folder)


class TwoTower:
    """An image tower and a text tower projecting into one normalised embedding space."""

    def __init__(self, model, preprocess, tokenizer, spec: ModelSpec, device: str = "cpu") -> None:  # noqa: ANN001
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = device
        self.meta: dict[str, Any] = {}  # training metadata of a loaded bundle (fusion weights, run id)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, spec: ModelSpec | str, *, cache_dir: Path, device: str = "cpu",
              load_pretrained: bool = True) -> TwoTower:
        """Build the model of ``spec`` with its initial weights (pretrained tag, checkpoint or packaged)."""
        spec = get_spec(spec) if isinstance(spec, str) else spec
        open_clip = import_open_clip()
        _register(spec, cache_dir)
        kwargs: dict[str, Any] = {}
        if spec.preprocess is not None:
            kwargs.update(image_mean=spec.preprocess.mean, image_std=spec.preprocess.std,
                          image_interpolation=spec.preprocess.interpolation)
        if load_pretrained and spec.image_tower_weights:
            kwargs["pretrained_image_path"] = resolve(spec.image_tower_weights, cache_dir)
        pretrained = spec.pretrained if load_pretrained else None
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.open_clip_name, pretrained=pretrained, device=device, **kwargs)
        except RuntimeError as exc:
            raise ConfigError(f"model {spec.name!r}: could not load pretrained weights {pretrained!r}: {exc}") from exc
        if spec.colour_branch:
            from skulens.models.colour_tower import add_colour_branch

            pre = model.visual.preprocess_cfg
            add_colour_branch(model, tuple(pre["mean"]), tuple(pre["std"]), spec.colour_scale)
            model.to(device)
        tokenizer = open_clip.get_tokenizer(spec.open_clip_name)
        model.eval()
        return cls(model, preprocess, tokenizer, spec, device)

    @classmethod
    def load(cls, bundle: Path, *, cache_dir: Path, device: str = "cpu") -> TwoTower:
        """Load a bundle written by :meth:`save`."""
        import torch

        meta_path = Path(bundle) / BUNDLE_META
        if not meta_path.is_file():
            raise ConfigError(f"{bundle} is not a skulens model bundle (no {BUNDLE_META})")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        spec = ModelSpec(**meta["spec"])
        built = cls.build(spec, cache_dir=cache_dir, device=device, load_pretrained=False)
        state = torch.load(Path(bundle) / BUNDLE_WEIGHTS, map_location=device, weights_only=True)
        built.model.load_state_dict(state)
        built.model.eval()
        built.meta = meta.get("meta", {})
        return built

    def save(self, bundle: Path, meta: dict[str, Any] | None = None) -> Path:
        """Write the bundle folder (weights + spec + ``meta``)."""
        import torch

        bundle = Path(bundle)
        bundle.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, bundle / BUNDLE_WEIGHTS)
        payload = {"spec": self.spec.model_dump(mode="json"), "meta": meta or {}}
        (bundle / BUNDLE_META).write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        return bundle

    # -- inputs -------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def context_length(self) -> int:
        return int(self.tokenizer.context_length)

    def tokenize(self, texts: Sequence[str]):  # noqa: ANN201 - torch.Tensor
        return self.tokenizer(list(texts)).to(self.device)

    def tokenize_padded(self, texts: Sequence[str]):  # noqa: ANN201 - torch.Tensor
        """Token ids padded to the longest text of the batch (HF tokenizers), not the context length."""
        hf = getattr(self.tokenizer, "tokenizer", None)
        if hf is None or not callable(hf):
            return self.tokenize(texts)
        enc = hf(list(texts), padding="longest", truncation=True, max_length=self.context_length, return_tensors="pt")
        return enc["input_ids"].to(self.device)

    def load_image(self, source: str | Path | bytes):  # noqa: ANN201 - torch.Tensor (3, H, W)
        """Decode a photo (path or bytes) with Pillow and preprocess it; ImageError if unusable."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                return self.preprocess(img.convert("RGB"))
        except Image.DecompressionBombError as exc:
            raise ImageError(f"image rejected as a decompression bomb: {exc}") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"cannot decode image: {exc}") from exc

    # -- encoding -----------------------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """L2-normalised text embeddings, float32 (N, D)."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenize(texts[start:start + batch_size])
                out.append(self.model.encode_text(tokens, normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def encode_images(self, images: Sequence[str | Path | bytes], batch_size: int = 64) -> np.ndarray:
        """L2-normalised image embeddings, float32 (N, D)."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.stack([self.load_image(i) for i in images[start:start + batch_size]]).to(self.device)
                out.append(self.model.encode_image(batch, normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    @property
    def embed_dim(self) -> int:
        return int(import_open_clip().get_model_config(self.spec.open_clip_name)["embed_dim"])

    # -- separable towers: frozen trunk features + trainable heads -----------------------------
    def _need_separable(self) -> None:
        if not self.spec.separable_towers:
            raise ConfigError(f"model {self.spec.name!r} has no separable towers; precomputed features need one")

    def image_trunk(self, pixels):  # noqa: ANN001, ANN201
        """Pooled image-trunk features before the projection (B, 1280 for Lite0)."""
        self._need_separable()
        return self.model.visual.trunk(pixels)

    def image_head(self, features):  # noqa: ANN001, ANN201
        return self.model.visual.head(features)

    def text_trunk(self, tokens):  # noqa: ANN001, ANN201
        """Mean-pooled text-transformer features before the projection (B, 384 for MiniLM)."""
        self._need_separable()
        text = self.model.text
        mask = (tokens != text.config.pad_token_id).long()
        return text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)

    def text_head(self, features):  # noqa: ANN001, ANN201
        return self.model.text.proj(features)
