"""ONNX export of the encoders and the reranker, INT8 quantization and the parity gate."""
