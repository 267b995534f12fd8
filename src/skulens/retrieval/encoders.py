"""Query and document encoders, registered by name so that a config (or ``skulens eval --encoder``)
picks one: ``minilm`` (packaged all-MiniLM-L6-v2, text only) and ``two_tower`` (a skulens bundle:
text and image towers, the served ONNX image tower when one is given)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from skulens.models.features import encode_by_length
from skulens.vectors import normalise


class QueryEncoder(Protocol):
    name: str

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_images(self, sources: Sequence[str | bytes]) -> np.ndarray: ...


ENCODERS: dict[str, Callable[..., QueryEncoder]] = {}


def register_encoder(name: str) -> Callable[[Callable[..., QueryEncoder]], Callable[..., QueryEncoder]]:
    def wrap(factory: Callable[..., QueryEncoder]) -> Callable[..., QueryEncoder]:
        ENCODERS[name] = factory
        return factory
    return wrap


def make_encoder(name: str, **options: Any) -> QueryEncoder:
    """The encoder registered as ``name``, built with ``options``."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; registered: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name](**options)


class ImageQueryError(ValueError):
    """A query photo that cannot be decoded."""


@register_encoder("minilm")
class SentenceEncoder:
    """A sentence-transformers model (default: the packaged all-MiniLM-L6-v2); text only."""

    name = "minilm"

    def __init__(self, path: str | None = None, device: str = "cpu", batch_size: int = 128) -> None:
        from skulens.compat import ensure_torchvision_ops

        ensure_torchvision_ops()
        from sentence_transformers import SentenceTransformer

        from skulens.models.packaged import minilm_path

        self.model = SentenceTransformer(path or minilm_path(), device=device)
        self.batch_size = batch_size

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.get_sentence_embedding_dimension()), np.float32)
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

    def encode_images(self, sources: Sequence[str | bytes]) -> np.ndarray:
        raise ValueError(f"encoder {self.name} has no image tower; use a two_tower encoder for photo queries")


@register_encoder("onnx_text")
class OnnxTextEncoder:
    """A text encoder exported by :func:`skulens.export.onnx_export.export_text_encoder` (token ids
    and mask in, normalised mean-pooled vector out), on ONNX Runtime with its folder's tokenizer."""

    name = "onnx_text"

    def __init__(self, onnx_path: str | Path, tokenizer_dir: str | Path, max_length: int | None = None,
                 threads: int | None = None, batch_size: int = 256) -> None:
        from transformers import AutoTokenizer

        from skulens.models.onnx import session

        self.session = session(Path(onnx_path), threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        # The folder's own sequence length (sentence-transformers saves max_seq_length as the
        # tokenizer's model_max_length: what training and evaluation truncated to), else 64.
        saved = getattr(self.tokenizer, "model_max_length", None)
        self.max_length = max_length or (saved if saved and saved <= 4096 else 64)
        self.label = Path(onnx_path).stem
        self.batch_size = max(1, int(batch_size))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised vectors of ``texts``, in their order, in batches of ``batch_size`` (one run
        over 45k titles took 24 GB)."""
        if not texts:
            return np.zeros((0, self.session.get_outputs()[0].shape[-1] or 0), np.float32)
        return normalise(encode_by_length(list(texts), self._encode_batch, self.batch_size))

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        return self.session.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                                       "attention_mask": enc["attention_mask"].astype(np.int64)})[0]

    def encode_images(self, sources: Sequence[str | bytes]) -> np.ndarray:
        raise ValueError(f"encoder {self.name} has no image tower; use a two_tower encoder for photo queries")


def text_encoder_from_files(model_dir: str | Path, onnx_path: str | Path | None) -> QueryEncoder:
    """A fine-tuned text encoder as served: its exported ONNX file when the parity gate passed one
    (INT8 when it could), else the sentence-transformers folder on PyTorch."""
    if onnx_path is not None and Path(onnx_path).is_file():
        return OnnxTextEncoder(onnx_path, model_dir)
    return SentenceEncoder(path=str(model_dir))


@register_encoder("two_tower")
class TwoTowerEncoder:
    """A skulens two-tower bundle; texts through its text tower, photos through its image tower."""

    name = "two_tower"

    def __init__(self, bundle: str | Path | None = None, *, tower: Any = None, image_onnx: Path | None = None,
                 text_onnx: Path | None = None, cache_dir: Path | None = None) -> None:
        from skulens.models.two_tower import TwoTower
        from skulens.retrieval.embed import EmbeddingMapper

        if tower is None:
            if bundle is None:
                raise ValueError("a two_tower encoder needs a bundle folder or a loaded tower")
            tower = TwoTower.load(Path(bundle), cache_dir=cache_dir or Path(bundle) / ".cache")
        self.mapper = EmbeddingMapper(tower, image_onnx)
        self.tower = tower
        # The exported text tower that passed the parity gate (INT8 when it did): query encoding on
        # ONNX Runtime instead of PyTorch.
        self.text_session = None
        if text_onnx is not None and Path(text_onnx).is_file():
            from skulens.models.onnx import session

            self.text_session = session(Path(text_onnx))
        # Files exported with a dynamic sequence axis take token ids padded to the longest text
        # only (about 5x faster for a short query than the 64-token context); older files are fixed.
        self.text_dynamic = self.text_session is not None and \
            not isinstance(self.text_session.get_inputs()[0].shape[1], int)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if self.text_session is None:
            return self.mapper.texts(list(texts))
        tokenize = self.tower.tokenize_padded if self.text_dynamic else self.tower.tokenize
        tokens = tokenize(list(texts)).cpu().numpy().astype(np.int64)
        return normalise(np.asarray(self.text_session.run(None, {"input_ids": tokens})[0], dtype=np.float32))

    def encode_images(self, sources: Sequence[str | bytes]) -> np.ndarray:
        vectors, ok = self.mapper.images(list(sources))
        if not ok.all():
            raise ImageQueryError(f"query photo {int(np.flatnonzero(~ok)[0])} could not be decoded as an image")
        return vectors


def query_vectors(encoder: QueryEncoder, text: str | None, image: str | bytes | None,
                  image_weight: float = 0.5) -> np.ndarray:
    """The (1, D) query vector of a text, a photo, or both: ``normalise(w * image + (1 - w) * text)``."""
    if image is not None and text:
        return normalise(image_weight * encoder.encode_images([image]) +
                         (1 - image_weight) * encoder.encode_texts([text]))
    if image is not None:
        return encoder.encode_images([image])
    return encoder.encode_texts([text])
