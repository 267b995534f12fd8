"""Cross-encoder rerankers as scorers f(query, titles) -> scores: the fine-tuned model in PyTorch, or
its exported ONNX file (INT8 when it passed the parity gate). Inference code, below training (which
fine-tunes them), evaluation, export and serving (which score with them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class CrossEncoderReranker:
    """Scores (query, title) pairs with a fine-tuned cross-encoder folder (HF format)."""

    def __init__(self, path: str | Path, device: str = "cpu", max_length: int = 64) -> None:
        from skulens.compat import ensure_torchvision_ops

        ensure_torchvision_ops()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path, num_labels=1).to(device).eval()
        self.device, self.max_length = device, max_length

    def score(self, query: str | list[str], titles: list[str], batch_size: int = 64) -> np.ndarray:
        """One relevance logit per title (higher is more relevant); ``query`` may be one per title."""
        import torch

        queries = [query] * len(titles) if isinstance(query, str) else query
        out = []
        with torch.inference_mode():
            for s in range(0, len(titles), batch_size):
                enc = self.tokenizer(queries[s:s + batch_size], titles[s:s + batch_size], truncation=True,
                                     max_length=self.max_length, padding=True, return_tensors="pt").to(self.device)
                out.append(self.model(**enc).logits.squeeze(-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class OnnxReranker:
    """The exported cross-encoder on ONNX Runtime (the INT8 file when it passed the parity gate):
    same tokenizer and inputs as the export, several times faster than PyTorch on a CPU."""

    def __init__(self, onnx_path: str | Path, tokenizer_dir: str | Path, max_length: int = 64,
                 threads: int | None = None) -> None:
        from transformers import AutoTokenizer

        from skulens.models.onnx import session

        self.path = Path(onnx_path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.session = session(self.path, threads)
        self.max_length = max_length

    def score(self, query: str | list[str], titles: list[str]) -> np.ndarray:
        """One relevance logit per title; ``query`` may be one per title."""
        if not titles:
            return np.zeros(0, np.float32)
        queries = [query] * len(titles) if isinstance(query, str) else query
        enc = self.tokenizer(queries, titles, truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="np")
        feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32).reshape(-1)
