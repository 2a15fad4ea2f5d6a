"""The ONNX path: ai.onnx.preview.training updates and decomposed update steps."""
