"""The ONNX family: `export_onnx` (encoders and causal LMs), `optimize_onnx`, `quantize` and calibration."""
