"""quantship: ship quantized ONNX models to production safely."""

import os

__version__ = "0.1.0"

TELEMETRY_OPT_OUT = "ORT_DISABLE_TELEMETRY"
"""onnxruntime (1.29 and later, on Linux) keeps a device id and an event cache under ~/.cache and a
session file in $TMPDIR, and uploads them to Microsoft. A model server or a quantize Job in someone's
cluster must not call out unasked: off unless the environment says otherwise. Read once, when
onnxruntime is first imported, so it is set here, before any module of ours imports it."""
os.environ.setdefault(TELEMETRY_OPT_OUT, "1")

UNIQUE_TAG_ENV = "QUANTSHIP_UNIQUE_TAG"
"""`quantship quantize-job --unique-tag`, from the environment: the operator sets it on an oci://
target's Job container, whose image (the user's spec.image) may be an older quantship. That one
ignores the variable; it would hand an option it does not know to `quantship quantize`, which
refuses it. Here, beside the CLI's other imports, so the CLI need not import the operator."""
