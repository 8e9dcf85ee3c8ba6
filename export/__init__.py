"""PyTorch → ONNX FP32 (parity-gated) → static INT8 (accuracy-gated), with metadata inside."""
