"""The ONNX Runtime toolbox (no step types): ONNX files and sessions, providers, fusion, genai build and run."""
