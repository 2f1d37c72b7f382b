"""Errors of the quantizer that a person must fix: bad models, bad data, bad paths.

The CLI prints them as one line and exits 2. A failed accuracy gate is not an error: it is a
verdict, written into the artifact, and exits 1.
"""


class QuantizeInputError(Exception):
    """The model, the data or an output path cannot be used as given; the message says why."""


class CalibrationFailed(QuantizeInputError):
    """onnxruntime's calibrator gave up on this data with this method (a histogram of a constant
    tensor, say). Another method may still work, so the tuner records it as a failed trial."""


class RangeTooWide(CalibrationFailed):
    """A histogram calibrator could not bin a tensor (numpy's "Too many bins for data range"), named
    in the message where the failed batch shows which: a range spanning most of float32 (a sentinel
    such as an additive mask's finfo.min, which min-max then finds and ranges itself), or a range of
    zero width at a magnitude where numpy's +-0.5 of bins are finer than float32 resolves (a tensor
    that is -10000 in every row)."""


def first_line(exc: BaseException) -> str:
    """An exception's first line: onnxruntime's and onnx's messages go on for pages."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
