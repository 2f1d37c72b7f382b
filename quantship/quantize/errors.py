"""Errors of the quantizer that a person must fix: bad models, bad data, bad paths.

The CLI prints them as one line and exits 2. A failed accuracy gate is not an error: it is a
verdict, written into the artifact, and exits 1.
"""


class QuantizeInputError(Exception):
    """The model, the data or an output path cannot be used as given; the message says why."""
