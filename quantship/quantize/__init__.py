"""Quantization with an accuracy gate and accuracy-aware fallback.

What other parts use: `run` (the whole `quantship quantize`), `QuantizeConfig` and its enums,
`QuantizeInputError`, `QuantizeResult`, and for a terminal `default_progress` and `printed_warnings`.
"""

from quantship.quantize.config import Calibration, Format, Mode, Precision, QuantizeConfig, Strategy
from quantship.quantize.errors import QuantizeInputError
from quantship.quantize.pipeline import QuantizeResult, default_progress, package_fp32, printed_warnings, run

__all__ = [
    "Calibration",
    "Format",
    "Mode",
    "Precision",
    "QuantizeConfig",
    "QuantizeInputError",
    "QuantizeResult",
    "Strategy",
    "default_progress",
    "package_fp32",
    "printed_warnings",
    "run",
]
