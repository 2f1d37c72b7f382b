"""Determinism at load: the same fixed input run twice must give the same outputs, bit for bit.

Stochastic kernels (a Random* op left in an exported graph) and run-to-run effects of threading make
the served answers differ from the gate's, and make shadow disagreements noise. The probe is one
row of every input: floats from a fixed-seed normal draw, integers and booleans zero (a valid token
id, mask or index for any model), open dimensions 1. The service runs it twice on the serving
session and exports `quantship_nondeterministic_outputs`.
"""

from __future__ import annotations

import logging

import numpy as np

from quantship.server.errors import ServerError
from quantship.server.runner import Runner, Signature

log = logging.getLogger("quantship.server")
SEED = 20240613


def probe_input(signature: Signature) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    inputs = {}
    for spec in signature.inputs:
        shape = tuple(1 if dim is None else dim for dim in spec.shape)
        if np.issubdtype(spec.dtype, np.floating):
            inputs[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            inputs[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return inputs


def deterministic(runner: Runner) -> bool | None:
    """True when two runs of the probe agree exactly, False when not, None when the model refuses it
    (then nothing is known; the load goes on)."""
    inputs = probe_input(runner.signature)
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
