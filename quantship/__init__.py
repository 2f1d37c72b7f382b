"""quantship: ship quantized ONNX models to production safely."""

import os

__version__ = "0.1.0"

TELEMETRY_OPT_OUT = "ORT_DISABLE_TELEMETRY"
"""onnxruntime (1.29 and later, on Linux) keeps a device id and an event cache under ~/.cache and a
session file in $TMPDIR, and uploads them to Microsoft. A model server or a quantize Job in someone's
cluster must not call out unasked: off unless the environment says otherwise. Read once, when
onnxruntime is first imported, so it is set here, before any module of ours imports it."""
os.environ.setdefault(TELEMETRY_OPT_OUT, "1")
