"""Determinism at load: the same fixed input run twice must give the same outputs, bit for bit.

Stochastic kernels (a Random* op left in an exported graph) and run-to-run effects of threading make
the served answers differ from the gate's, and make shadow disagreements noise. The probe is one
row of every input: floats from a fixed-seed normal draw, integers and booleans zero (a valid token
id, mask or index for any model), open dimensions as in one sample of the gate's data (the manifest's
`row_shape`; 1 where it records none: an audio model's convolutions refuse a waveform of one sample,
and the probe never ran on one). The service runs it twice on the serving session and exports
`quantship_nondeterministic_outputs`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from quantship.server.errors import ServerError
from quantship.server.runner import Runner
from quantship.server.runner_signature import Signature

log = logging.getLogger("quantship.server")
SEED = 20240613
MAX_BYTES = 64 * 2**20
"""Most bytes a probe input may hold: a manifest is as hostile as its artifact, and a row_shape of
[1, 10**12] must not cost a terabyte at load. A real row past it is past any request the server reads
(--max-body-bytes, 16 MiB by default) anyway."""


def probe_input(
    signature: Signature, row_shapes: Mapping[str, Sequence[int]]
) -> dict[str, np.ndarray] | None:
    """The probe's input (see the module's docstring), or None where it would exceed MAX_BYTES."""
    shapes = {spec.name: spec.one_row(row_shapes.get(spec.name, ())) for spec in signature.inputs}
    if sum(math.prod(shapes[spec.name]) * spec.dtype.itemsize for spec in signature.inputs) > MAX_BYTES:
        return None
    rng = np.random.default_rng(SEED)
    inputs = {}
    for spec in signature.inputs:
        if np.issubdtype(spec.dtype, np.floating):
            inputs[spec.name] = rng.standard_normal(shapes[spec.name]).astype(spec.dtype)
        else:
            inputs[spec.name] = np.zeros(shapes[spec.name], dtype=spec.dtype)
    return inputs


def deterministic(runner: Runner, row_shapes: Mapping[str, Sequence[int]]) -> bool | None:
    """True when two runs of the probe agree exactly, False when not, None when the model refuses it
    or it would be too large (then nothing is known; the load goes on). `row_shapes`:
    `Artifact.row_shapes`."""
    inputs = probe_input(runner.signature, row_shapes)
    if inputs is None:
        log.warning(
            "determinism probe not run: the manifest's row_shape makes a probe input of more than %d MiB",
            MAX_BYTES // 2**20,
        )
        return None
    try:
        first, second = runner.run(inputs), runner.run(inputs)
    except ServerError as exc:
        log.warning("determinism probe not run: the model refused a fixed probe input: %s", exc)
        return None
    return all(_same(first[name], second[name]) for name in first)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind in "fc":
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))
