"""The ONNX text encoder encodes a catalogue in bounded batches and keeps the texts' order."""

from __future__ import annotations

import numpy as np

from skulens.retrieval.encoders import OnnxTextEncoder


class _Tokenizer:
    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        width = min(max(len(t) for t in texts), max_length)
        ids = np.zeros((len(texts), width), np.int64)
        for row, text in enumerate(texts):
            codes = [ord(c) for c in text[:width]]
            ids[row, :len(codes)] = codes
        return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)}


class _Session:
    def __init__(self):
        self.batches: list[tuple[int, int]] = []

    def run(self, _outputs, feeds):
        ids = feeds["input_ids"]
        self.batches.append(ids.shape)
        # A vector that depends on the text only: [length, sum of codes, 1].
        return [np.stack([(ids > 0).sum(1), ids.sum(1), np.ones(len(ids))], axis=1).astype(np.float32)]


def test_encode_texts_runs_bounded_batches_and_returns_vectors_in_input_order():
    encoder = object.__new__(OnnxTextEncoder)
    encoder.session, encoder.tokenizer, encoder.max_length, encoder.batch_size = _Session(), _Tokenizer(), 64, 4
    texts = ["a much longer product title", "x", "drill", "1/2 in. pipe", "y", "cordless drill 18v", "zz"] * 3
    vectors = encoder.encode_texts(texts)
    assert max(rows for rows, _ in encoder.session.batches) == 4
    assert len(encoder.session.batches) == 6
    expected = np.array([[len(t), sum(map(ord, t)), 1.0] for t in texts], np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, rtol=1e-5)
    # Similar lengths share a batch: no batch pads the one-letter titles to the longest title.
    assert min(width for _, width in encoder.session.batches) == 1
