"""quantship: ship quantized ONNX models to production safely."""

__version__ = "0.1.0"
