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


def _without_value_info(source: Path, target: Path) -> Path:
    """A copy without intermediate shape annotations: the dynamo exporter can record shapes that
    ONNX's strict shape inference (run by the quantizer) then contradicts; it re-infers them."""
    import onnx

    model = onnx.load(str(source))
    model.graph.ClearField("value_info")
    onnx.save(model, str(target))
    return target


def ffn_down_projections(source: Path) -> list[str]:
    """MatMul nodes whose constant weight narrows by 2x or more (a transformer FFN's output layer).

    Their input is the GELU output, whose long tail per-tensor dynamic quantization handles worst:
    on the offline text tower, keeping just these in fp32 lifted the INT8 cosine from 0.990 to
    0.994 (measured on 256 real titles), more than keeping any whole layer in fp32."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    shapes = {init.name: numpy_helper.to_array(init).shape for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and len(shapes.get(node.input[1], ())) == 2:
            rows, cols = shapes[node.input[1]]
            if rows >= 2 * cols:
                names.append(node.name)
    return names


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


def quantize_static_int8(source: Path, target: Path, input_name: str, calibration: list[np.ndarray]) -> Path:
    """QDQ static quantization calibrated on ``calibration`` batches (per-channel weights)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    clean = _without_value_info(source, target.with_name(target.stem + ".src.onnx"))
    prepared = target.with_name(target.stem + ".pre.onnx")
    quant_pre_process(str(clean), str(prepared), skip_symbolic_shape=True)
    clean.unlink(missing_ok=True)
    quantize_static(str(prepared), str(target), _Calibration(input_name, calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    prepared.unlink(missing_ok=True)
    return target
