"""Whether a failed onnxruntime call is the client's to fix (400) or the model's (500): onnxruntime's
error types, its message without the C++ noise, an empty request, and control runs on ones shaped as
a failed request (`Controls`). Used by `runner.Runner.run` on its failure path only.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

from quantship.server.runner_signature import Tensors

CONTROL_INTERVAL_S = 1.0
"""How long a control run's verdict stands for requests of one shape (see `Controls`)."""
CONTROL_SHAPES = 64
"""Shapes whose verdicts are kept at once."""


ORT_INVALID_ARGUMENT: type[Exception] = getattr(
    ort.capi.onnxruntime_pybind11_state, "InvalidArgument", ValueError
)
ORT_FAILURES: tuple[type[Exception], ...] = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in ("Fail", "RuntimeException")
    if hasattr(ort.capi.onnxruntime_pybind11_state, name)
)
"""A kernel's ORT_ENFORCE or a failed status: raised as often for a request's values as for a bug."""


_SOURCE_LOCATION = re.compile(r"\S+\.(?:h|cc|cpp):\d+ (?:[^()]*\([^()]*\)(?: const)? (?:\[with [^\]]*\] )?)?")
"""Where in onnxruntime's C++ an ORT_ENFORCE failed (`/onnxruntime_src/...h:563 void ...Append(...) `):
nothing a client can act on."""


def ort_message(exc: Exception) -> str:
    """onnxruntime's sentence without its code prefix (`[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : `)
    and without the C++ source location some carry."""
    return _SOURCE_LOCATION.sub("", str(exc).rsplit(" : ", 1)[-1].strip())


def empty_input(inputs: Tensors) -> str | None:
    """The request's first input, named for the message, where every input holds no values (an
    empty sequence: its ids and its mask `[1, 0]`; no rows is refused before any call:
    `Signature.validate`); None otherwise. A model that cannot run an empty request fails on ones of
    its shape too, which would make it a 500 (`Controls`): but an empty request is the client's to
    change (a tokenizer's empty string), and a 500 would burn the error budget of a canary that
    behaves as its stable does (hunt of 2026-12-06: gpt2 answered `[1, 0]` ids with a Reshape's
    FAIL). Where some input holds values (a KV cache's first step: its past empty, its ids not), a
    failure is judged as any other, so a canary broken there still counts as failing."""
    if not inputs or any(array.size for array in inputs.values()):
        return None
    name, array = next(iter(inputs.items()))
    return f"input '{name}' of shape {list(array.shape)}, which holds no values"


class Controls:
    """Whether the model runs on ones shaped as a failed request was (ones, not zeros: onnxruntime
    refuses an integer Div by 0; ones are a valid mask, id, count and divisor). If it does,
    the request's values caused the failure (an index past an axis): the client's to change, 400. If not, its
    shapes do not suit the model, or the model is broken at them, and nobody can tell which: a 500,
    which the error SLI counts, so a canary broken on real traffic's shapes still rolls back. One run
    per shape per CONTROL_INTERVAL_S, for at most CONTROL_SHAPES shapes: a failing request costs one
    call more at most."""

    def __init__(self, call: Callable[[Tensors], object]) -> None:
        self._call = call
        self._verdicts: collections.OrderedDict[tuple[Any, ...], tuple[float, bool]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()  # threads and the event loop both run models; never held for a call

    def values_at_fault(self, inputs: Tensors) -> bool:
        key = tuple((name, array.dtype.str, array.shape) for name, array in sorted(inputs.items()))
        with self._lock:
            known = self._verdicts.get(key)
        if known is not None and time.monotonic() - known[0] < CONTROL_INTERVAL_S:
            return known[1]
        ones = {
            name: np.full(array.shape, "", dtype=object) if array.dtype.kind == "O" else np.ones_like(array)
            for name, array in inputs.items()
        }
        try:
            self._call(ones)
            runs = True
        except Exception:  # any of onnxruntime's pybind types
            runs = False
        with self._lock:
            self._verdicts[key] = (time.monotonic(), runs)
            self._verdicts.move_to_end(key)
            while len(self._verdicts) > CONTROL_SHAPES:
                self._verdicts.popitem(last=False)
        return runs
