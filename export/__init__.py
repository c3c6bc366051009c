"""Quantization and export of checkpoints to device bundles (ExecuTorch, ONNX, TFLite, TFLite Micro)."""
