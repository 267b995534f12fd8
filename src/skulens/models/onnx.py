"""ONNX Runtime sessions for the exported towers and the reranker (inference code: serving,
indexing, evaluation and training all run models through here).

Execution provider by configuration (``models.onnx_device``, or ``$SKULENS_ONNX_DEVICE``):
``auto`` takes CUDA when this ONNX Runtime build has it (``onnxruntime-gpu`` on a GPU machine) and
the CPU otherwise; ``cpu`` forces the CPU; ``cuda`` requires CUDA and fails with a clear error
where it is missing. The session reports which provider it really got (``providers_of``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEVICES = ("auto", "cpu", "cuda")
_default_device = "auto"
_default_threads: int | None = None


class ProviderError(RuntimeError):
    """The configured execution provider is not available in this ONNX Runtime."""


def configure(device: str, threads: int | None = None) -> None:
    """Set the default device (``models.onnx_device``) and intra-op threads (``serving.onnx_threads``;
    None: the CPU count) of later sessions."""
    global _default_device, _default_threads  # noqa: PLW0603 - process-wide, read at session creation
    if device not in DEVICES:
        raise ValueError(f"onnx device must be one of {', '.join(DEVICES)}, got {device!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"onnx threads must be at least 1, got {threads}")
    _default_device, _default_threads = device, threads


def providers(device: str | None = None, available: list[str] | None = None) -> list[str]:
    """The execution providers for ``device`` among those ``available`` (default: this runtime's)."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    device = device or os.environ.get("SKULENS_ONNX_DEVICE") or _default_device
    if device not in DEVICES:
        raise ValueError(f"onnx device must be one of {', '.join(DEVICES)}, got {device!r}")
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise ProviderError("models.onnx_device is 'cuda' but this ONNX Runtime has no CUDAExecutionProvider "
                            f"(available: {', '.join(available)}); install onnxruntime-gpu on a CUDA machine "
                            "or use 'auto'")
    if device in ("cuda", "auto") and has_cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(path: Path, threads: int | None = None, device: str | None = None):  # noqa: ANN201
    """An ONNX Runtime session of ``path`` (``threads``: intra-op threads, default the configured
    number, else the CPU count)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or _default_threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers(device))


def providers_of(sess) -> list[str]:  # noqa: ANN001
    """The providers a session really runs on (CUDA can fall back to the CPU at load)."""
    return list(sess.get_providers())


def run(sess, **inputs: np.ndarray) -> np.ndarray:  # noqa: ANN001
    return sess.run(None, inputs)[0]
