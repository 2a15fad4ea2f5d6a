"""The ONNX rewrite passes, one a module. Each emits standard ONNX ops into a Block."""
