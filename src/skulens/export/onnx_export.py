"""Export to ONNX with a dynamic batch, quantize to INT8 with ONNX Runtime, and run the sessions.

* The text tower takes ``input_ids`` (B, context_length) int64; the image tower ``pixels``
  (B, 3, S, S) float32; both output L2-normalised embeddings. The reranker takes the BERT inputs
  and outputs one logit per pair.
* torch 2.13 exports with the dynamo exporter; the batch dimension is declared dynamic and the
  example batch has 2 rows (a batch of 1 gets specialised to a constant).
* INT8: dynamic quantization (weights int8, activations quantized at run time) suits the
  transformer towers; static QDQ quantization calibrated on training photos is tried for the
  convolutional image tower. :mod:`skulens.export.parity` decides which artefact is served.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from skulens.models.onnx import run, session  # noqa: F401 - the sessions live with the models


def export_module(module, example: tuple, path: Path, input_names: list[str], output_name: str,  # noqa: ANN001
            dynamic_seq: bool = False) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = {}
    for name, tensor in zip(input_names, example, strict=True):
        dims = {0: batch}
        if dynamic_seq and tensor.dim() == 2:
            dims[1] = torch.export.Dim("seq", min=2, max=512)
        shapes[name] = dims
    module.eval()
    with torch.inference_mode():
        program = torch.onnx.export(module, example, dynamo=True, input_names=input_names,
                                    output_names=[output_name], dynamic_shapes=shapes, optimize=True,
                                    verbose=False)
    program.save(str(path))
    return path


def export_two_tower(tower, out_dir: Path) -> dict[str, Path]:  # noqa: ANN001 - skulens.models.TwoTower
    """``text.onnx`` and ``image.onnx`` (fp32) of a :class:`~skulens.models.two_tower.TwoTower`."""
    import torch
    from torch import nn

    model = tower.model

    class TextEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids):  # noqa: ANN001, ANN202
            return self.model.encode_text(input_ids, normalize=True)

    class ImageEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels):  # noqa: ANN001, ANN202
            return self.model.encode_image(pixels, normalize=True)

    tokens = tower.tokenize(["a red shirt for men", "blue running shoes"]).cpu()
    pixels = torch.zeros(2, 3, tower.image_size, tower.image_size)
    return {
        # A dynamic sequence axis: a query of a few tokens runs on those, not on the padded context.
        "text": export_module(TextEncoder(), (tokens,), out_dir / "text.onnx", ["input_ids"], "text_embedding",
                              dynamic_seq=True),
        "image": export_module(ImageEncoder(), (pixels,), out_dir / "image.onnx", ["pixels"], "image_embedding"),
    }


def export_reranker(model_dir: Path, out_dir: Path) -> Path:
    """``reranker.onnx`` (fp32) of a fine-tuned cross-encoder folder, dynamic batch and length."""
    from skulens.compat import ensure_torchvision_ops

    ensure_torchvision_ops()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1).eval()
    enc = tokenizer(["red drill bit", "wood screws"], ["DEWALT red titanium drill bit set", "1 in. wood screws"],
                    padding="max_length", max_length=16, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]

    from torch import nn

    class Scorer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001, ANN202
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits.squeeze(-1)

    return export_module(Scorer(), tuple(enc[n] for n in names), out_dir / "reranker.onnx", names, "rerank_score",
                   dynamic_seq=True)


def export_text_encoder(model_dir: Path, out_dir: Path) -> Path:
    """``text-encoder.onnx`` (fp32) of a sentence-transformers MiniLM folder: token ids and mask in,
    the mean-pooled, normalised sentence vector out (what the folder's pooling and Normalize
    modules compute), dynamic batch and length."""
    from skulens.compat import ensure_torchvision_ops

    ensure_torchvision_ops()
    import torch
    from torch import nn
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    enc = tokenizer(["red drill bit", "1 in. wood screws for decking"], padding=True, return_tensors="pt")

    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):  # noqa: ANN001, ANN202
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    names = ["input_ids", "attention_mask"]
    return export_module(Pooled(), tuple(enc[n] for n in names), out_dir / "text-encoder.onnx", names,
                         "sentence_vector", dynamic_seq=True)


def _without_value_info(source: Path, target: Path) -> Path:
    """A copy without intermediate shape annotations: the dynamo exporter can record shapes that
    ONNX's strict shape inference (run by the quantizer) then contradicts; it re-infers them."""
    import onnx

    model = onnx.load(str(source))
    model.graph.ClearField("value_info")
    onnx.save(model, str(target))
    return target


def ffn_projections(source: Path) -> list[str]:
    """Both MatMuls of every transformer FFN (constant weights that widen or narrow by 2x or more).

    Dynamic INT8 of these loses the most: the up-projection's input is the LayerNorm output with its
    outlier dimensions, the down-projection's the GELU's long tail. With trained heads, keeping only
    the down-projections fp32 gave cosine 0.993 (just over the 0.99 gate); keeping the whole FFN fp32
    (attention stays INT8) gives 0.997 (min 0.992) on 256 held-out titles, reproducibly, at about
    1.1x the dynamic file's latency (/tmp measurements in the issue note of wave 2)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    shapes = {init.name: numpy_helper.to_array(init).shape for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and len(shapes.get(node.input[1], ())) == 2:
            rows, cols = shapes[node.input[1]]
            if rows >= 2 * cols or cols >= 2 * rows:
                names.append(node.name)
    return names


# The stem and the first two stages of EfficientNet-Lite (matched on the weights' module paths; the
# dynamo export names nodes node_Conv_N).
EARLY_CONV_WEIGHTS = r"(conv_stem\.|blocks\.[01]\.)"


def early_convs(model_path: Path, pattern: str = EARLY_CONV_WEIGHTS) -> list[str]:
    """Conv nodes of the stem and stages 0-1 of the image trunk.

    Their linear-bottleneck outputs (16-24 channels at 112/56 px, ranges of about +-50) keep only
    6-16 steps per channel standard deviation under per-tensor uint8 activations: the signal-to-noise
    ratio falls from 28 dB after the stem to 11-12 dB by block 2, and a trained head (which cancels
    what all photos share) turns that into a 0.987 cosine. Kept fp32, the rest static INT8: 0.996.
    Excluding the depthwise Convs alone is worse (0.82): their Clip is then quantized over the raw
    conv range."""
    import onnx

    rx = re.compile(pattern)
    return [n.name for n in onnx.load(str(model_path)).graph.node
            if n.op_type == "Conv" and len(n.input) > 1 and rx.search(n.input[1])]


def quantize_dynamic_int8(source: Path, target: Path, keep_fp32: list[str] | None = None) -> Path:
    """Weights to int8, activations quantized at run time (MatMul/Gemm; best for transformers).
    ``keep_fp32``: node names left unquantized."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    clean = _without_value_info(source, target.with_name(target.stem + ".src.onnx"))
    try:
        quantize_dynamic(str(clean), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=keep_fp32 or [])
    finally:
        clean.unlink(missing_ok=True)
    return target


class _Calibration:
    """Feeds calibration batches to ORT's static quantizer."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = iter(batches)

    def get_next(self):  # noqa: ANN201
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:  # pragma: no cover - ORT calls it for some methods only
        pass


def quantize_static_int8(source: Path, target: Path, input_name: str, calibration: list[np.ndarray],
                         keep_fp32: list[str] | None = None, keep_early_convs: bool = True) -> Path:
    """QDQ static quantization calibrated on ``calibration`` batches (per-channel weights);
    ``keep_fp32`` nodes and, by default, the early convolutions (:func:`early_convs`) stay fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    clean = _without_value_info(source, target.with_name(target.stem + ".src.onnx"))
    prepared = target.with_name(target.stem + ".pre.onnx")
    quant_pre_process(str(clean), str(prepared), skip_symbolic_shape=True)
    clean.unlink(missing_ok=True)
    from skulens.models.colour_tower import outside_trunk_nodes

    exclude = list(keep_fp32 or []) + (early_convs(prepared) if keep_early_convs else []) \
        + outside_trunk_nodes(prepared)  # a colour branch and the head after it (none without one)
    quantize_static(str(prepared), str(target), _Calibration(input_name, calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=exclude)
    prepared.unlink(missing_ok=True)
    return target
