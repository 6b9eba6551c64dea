"""Quantized ONNX ops deployed models contain, imported with exact integer semantics."""
