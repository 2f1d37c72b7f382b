"""The model as onnxruntime runs it: its signature, input validation against it, and the call.

The service builds one Runner per session (served INT8 model, FP32 reference, clip observer) from
`quantship.runtime.create_session`, so the server runs the kernels the accuracy gate judged. The
batcher and the background workers merge requests with `concat` and `split`. Knows nothing of HTTP.
"""

from __future__ import annotations

import collections
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from quantship import runtime
from quantship.server.errors import InferenceFailed, InvalidInput
from quantship.server.protocol import DATATYPES, datatype_of

Tensors = Mapping[str, np.ndarray]

log = logging.getLogger(__name__)

CONTROL_INTERVAL_S = 1.0
"""How long a control run's verdict stands for requests of one shape (see `_Controls`)."""
CONTROL_SHAPES = 64
"""Shapes whose verdicts are kept at once."""

FAILURE_LOG_INTERVAL_S = 10.0
"""A failing model logs one line per this many seconds, with the count of failures since."""

_ORT_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class UnsupportedModel(Exception):
    """A model this server cannot serve (an input or output that is not a plain tensor)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int | None, ...]
    """Dimensions; None where the model leaves one open (a symbolic or unknown dimension)."""
    dim_names: tuple[str | None, ...] = ()
    """The model's name for each open dimension (`batch`, `seq`), None where it gives none. Inputs
    sharing a name must agree on its size: checked here rather than failing deep in a kernel."""

    @property
    def dtype(self) -> np.dtype[Any]:
        return DATATYPES[self.datatype]

    @property
    def wire_shape(self) -> list[int]:
        """The shape as the protocol writes it: -1 for an open dimension."""
        return [-1 if dim is None else dim for dim in self.shape]

    def describe(self) -> str:
        return f"{self.name} ({self.datatype} {self.wire_shape})"

    @classmethod
    def from_ort(cls, node: ort.NodeArg) -> TensorSpec:
        datatype = _ORT_DATATYPES.get(node.type)
        if datatype is None:
            raise UnsupportedModel(f"'{node.name}' is {node.type}; only plain tensors can be served")
        dims = node.shape or ()
        shape = tuple(dim if isinstance(dim, int) and dim >= 0 else None for dim in dims)
        names = tuple(dim if isinstance(dim, str) and dim else None for dim in dims)
        return cls(node.name, datatype, shape, names)


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_session(cls, session: ort.InferenceSession) -> Signature:
        return cls(
            tuple(TensorSpec.from_ort(node) for node in session.get_inputs()),
            tuple(TensorSpec.from_ort(node) for node in session.get_outputs()),
        )

    @functools.cached_property
    def batchable(self) -> bool:
        """True when every input's first dimension is open: a batch dimension requests can share."""
        return bool(self.inputs) and all(spec.shape and spec.shape[0] is None for spec in self.inputs)

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def validate(self, inputs: Tensors) -> int:
        """Check names, dtypes and shapes against the model; return the request's row count."""
        for name in inputs:
            if name not in self._input_names:
                raise InvalidInput(f"unknown input '{name}'; the model takes {self._takes()}")
        rows: int | None = None
        for spec in self.inputs:
            array = inputs.get(spec.name)
            if array is None:
                raise InvalidInput(f"missing input '{spec.name}'; the model takes {self._takes()}")
            _check_tensor(spec, array)
            if not self.batchable:
                continue
            if array.shape[0] == 0:
                raise InvalidInput(f"input '{spec.name}' has no rows (shape {list(array.shape)})")
            if rows is not None and array.shape[0] != rows:
                raise InvalidInput(
                    f"inputs disagree on the batch size: '{spec.name}' has {array.shape[0]} rows, "
                    f"others {rows}"
                )
            rows = array.shape[0]
        self._check_named_dims(inputs)
        return rows if rows is not None else 1

    @functools.cached_property
    def _input_names(self) -> frozenset[str]:
        return frozenset(spec.name for spec in self.inputs)

    def _takes(self) -> str:
        return ", ".join(spec.describe() for spec in self.inputs)

    def _check_named_dims(self, inputs: Tensors) -> None:
        """Open dimensions the model names alike (`seq` of input_ids and attention_mask) must agree."""
        seen: dict[str, tuple[str, int]] = {}
        for spec in self.inputs:
            for axis, name in enumerate(spec.dim_names):
                if name is None:
                    continue
                size = inputs[spec.name].shape[axis]
                first = seen.setdefault(name, (spec.name, size))
                if first[1] != size:
                    raise InvalidInput(
                        f"inputs disagree on dimension '{name}': '{spec.name}' has {size} "
                        f"(axis {axis}), '{first[0]}' has {first[1]}"
                    )

    def check_outputs(self, names: Sequence[str]) -> None:
        known = [spec.name for spec in self.outputs]
        for name in names:
            if name not in known:
                raise InvalidInput(f"unknown output '{name}'; the model gives {', '.join(known)}")


def _check_tensor(spec: TensorSpec, array: np.ndarray) -> None:
    if array.dtype != spec.dtype and not (spec.datatype == "BYTES" and array.dtype.kind in "OUS"):
        raise InvalidInput(
            f"input '{spec.name}' is {datatype_of(array.dtype)}; the model expects {spec.datatype}"
        )
    if len(array.shape) != len(spec.shape):
        raise InvalidInput(
            f"input '{spec.name}' has shape {list(array.shape)} ({len(array.shape)} dimensions); "
            f"the model expects {spec.wire_shape} ({len(spec.shape)} dimensions)"
        )
    for axis, (got, want) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if want is not None and got != want:
            raise InvalidInput(
                f"input '{spec.name}' has shape {list(array.shape)}; dimension {axis} must be {want} "
                f"(the model expects {spec.wire_shape})"
            )


class Runner:
    """One onnxruntime session. `run` is blocking: call it from a worker thread, or on the event loop
    only for calls measured shorter than a thread hand-off (batch_policy.INLINE_CALL_S)."""

    def __init__(self, session: ort.InferenceSession, value_free: frozenset[str] = frozenset()) -> None:
        """`value_free`: outputs computed from no input's values (see `value_free_outputs`); only
        those may be shared by the requests of a merged call when they have no batch dimension."""
        self.session = session
        self.signature = Signature.from_session(session)
        self._value_free = value_free
        self._layout: _BatchLayout | None = None  # learned at the first merged call that needs it
        self._output_names = [spec.name for spec in self.signature.outputs]
        self._run_options = ort.RunOptions()
        # A refused input is answered 400; onnxruntime's own error log of it would be noise.
        self._run_options.log_severity_level = 4
        self._controls = _Controls(self._call)
        self._failures = ThrottledLog(FAILURE_LOG_INTERVAL_S)

    @classmethod
    def load(
        cls, model: Path | bytes, *, threads: int | None = None, proto: onnx.ModelProto | None = None
    ) -> Runner:
        """A session of `model`; `proto`, its graph when the caller has parsed it already."""
        session = runtime.create_session(model, threads=threads)  # first: onnxruntime names what is wrong
        return cls(session, value_free_outputs((proto or runtime.load_proto(model)).graph))

    def run(self, inputs: Tensors) -> dict[str, np.ndarray]:
        try:
            values = self._call(inputs)
        except _ORT_INVALID_ARGUMENT as exc:  # e.g. a token id past the vocabulary: the client's to fix
            raise InvalidInput(f"the model refused the input: {_ort_message(exc)}") from None
        except _ORT_FAILURES as exc:  # a kernel's FAIL names no culprit: an index past a gather's axis?
            if self._controls.values_at_fault(inputs):
                raise InvalidInput(f"the model could not run on the input: {_ort_message(exc)}") from None
            self._failures.error("onnxruntime failed, on ones of the same shapes too: %s", exc)
            raise InferenceFailed(f"onnxruntime failed: {_ort_message(exc)}") from exc
        except Exception as exc:  # onnxruntime's other pybind types (none with a common base), or ours
            self._failures.error("onnxruntime failed: %s", exc)
            raise InferenceFailed(f"onnxruntime failed: {_ort_message(exc)}") from exc
        return dict(zip(self._output_names, values, strict=True))

    def refusal(self, inputs: Tensors) -> str | None:
        """Why the model cannot run on `inputs` (onnxruntime's message), or None when it can: for the
        server's own synthetic inputs, which no control run judges and no error log needs."""
        try:
            self._call(inputs)
        except Exception as exc:  # any of onnxruntime's pybind types
            return _ort_message(exc)
        return None

    def _call(self, inputs: Tensors) -> list[Any]:
        return self.session.run(self._output_names, dict(inputs), self._run_options)

    def filled(self, rows: int, fill: int) -> dict[str, np.ndarray]:
        """An input of `fill` everywhere (empty strings for BYTES): `rows` rows where the first
        dimension is open, 1 in every other open dimension: what the batch policy times."""
        return {spec.name: _filled(spec, rows, fill) for spec in self.signature.inputs}

    def run_many(
        self, requests: Sequence[Tensors], rows: Sequence[int], *, max_rows: int
    ) -> list[dict[str, np.ndarray]]:
        """Run several requests, in calls of at most `max_rows` rows where they can share a batch (a
        larger request runs alone), and split the results. Raises the first request's InvalidInput,
        if any (for the background sessions)."""
        outcomes: list[Outcome] = []
        for chunk in _row_chunks(rows, max_rows):
            outcomes += self.run_batch([requests[i] for i in chunk], [rows[i] for i in chunk])
        for outcome in outcomes:
            if isinstance(outcome, InvalidInput):
                raise outcome
        return outcomes  # type: ignore[return-value]  # no InvalidInput left

    def run_batch(self, requests: Sequence[Tensors], rows: Sequence[int]) -> list[Outcome]:
        """Each request's outputs, or the InvalidInput that request alone caused (a token id past the
        vocabulary): one bad request in a merged call must not fail the others, so its group is rerun
        one request at a time. An output without the batch dimension is given whole to each request
        when it reads no input's values (`_probe_layout`); otherwise requests run alone."""
        if len(requests) == 1:
            return [_outcome(self.run, requests[0])]
        results: list[Outcome | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = collections.defaultdict(list)
        for index, request in enumerate(requests):
            key = batch_key(request) if self.signature.batchable else ("alone", index)
            groups[key].append(index)
        for indices in groups.values():
            if len(indices) > 1 and self._layout is not None and self._layout.alone:
                for index in indices:  # outputs no merged call can answer for each request
                    results[index] = _outcome(self.run, requests[index])
                continue
            try:
                merged = self.run(concat([requests[i] for i in indices]))
            except (InvalidInput, InferenceFailed):  # whichever request caused it fails alone
                for index in indices:
                    results[index] = _outcome(self.run, requests[index])
                continue
            parts = self._split(merged, [rows[i] for i in indices])
            if parts is None:  # the merged call cannot answer for each: run each on its own
                parts = [self.run(requests[i]) for i in indices]
            for index, part in zip(indices, parts, strict=True):
                results[index] = part
        return [result for result in results if result is not None]

    def _split(self, merged: Tensors, rows: Sequence[int]) -> list[dict[str, np.ndarray]] | None:
        """`split`, sharing the outputs the layout shares; the layout is learned the first time an
        output lacks the batch dimension (a static transformer's position embeddings), not before:
        a model whose outputs all carry it never pays the probe."""
        shared = self._layout.shared if self._layout is not None else frozenset()
        parts = split(merged, rows, shared)
        if parts is None and self._layout is None:
            self._layout = self._probe_layout()
            parts = None if self._layout.alone else split(merged, rows, self._layout.shared)
        return parts

    def _probe_layout(self) -> _BatchLayout:
        """Which outputs lack the batch dimension, and whether all of them may be shared, from two
        calls on ones (1 row, then 2): shared where they are value-free and the same at both."""
        try:
            one, two = (
                dict(zip(self._output_names, self._call(self.filled(n, 1)), strict=True)) for n in (1, 2)
            )
        except Exception as exc:  # any of onnxruntime's pybind types
            log.warning("outputs without a batch dimension, and ones fail (%s): requests run alone", exc)
            return _BatchLayout(frozenset(), alone=True)
        batchless = {name for name in one if not (_leads(one[name], 1) and _leads(two[name], 2))}
        shared = frozenset(
            name
            for name in batchless
            if name in self._value_free
            and one[name].shape == two[name].shape
            and np.array_equal(one[name], two[name])
        )
        if shared != batchless:
            log.info(
                "outputs %s lack a batch dimension and depend on it: requests run alone", batchless - shared
            )
        return _BatchLayout(shared, alone=shared != batchless)


@dataclass(frozen=True)
class _BatchLayout:
    shared: frozenset[str]
    """Outputs without a batch dimension that every request of a merged call shares as they are."""
    alone: bool
    """Some output without a batch dimension cannot be shared: requests never merge."""


def _leads(value: np.ndarray, rows: int) -> bool:
    return value.ndim > 0 and value.shape[0] == rows


SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
"""Ops whose output depends on their input's shape, not its values."""


def value_free_outputs(graph: onnx.GraphProto) -> frozenset[str]:
    """Graph outputs computed from no input's values: from initializers, constants and input shapes
    (through SHAPE_ONLY_OPS) only, so equal for every request of one shape. The shape of a computed
    tensor reads values when that tensor does: NonZero's count, a Reshape to a shape read from the
    input. A node with a subgraph (If, Loop, Scan) counts as reading every input, since its body may
    name any outer value."""
    inputs = {i.name for i in graph.input}
    read = set(inputs)
    for node in graph.node:  # ONNX requires topological order
        if node.op_type in SHAPE_ONLY_OPS and (node.input[0] in inputs or node.input[0] not in read):
            continue  # the shape of a request's input, or of a tensor no input's values reach
        has_body = any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
        )
        if has_body or any(name in read for name in node.input):
            read.update(node.output)
    return frozenset(o.name for o in graph.output if o.name not in read)


Outcome = dict[str, np.ndarray] | InvalidInput


def _row_chunks(rows: Sequence[int], most: int) -> Iterator[range]:
    """Consecutive requests, as index ranges of at most `most` rows (a larger request alone)."""
    start, total = 0, 0
    for index, count in enumerate(rows):
        if index > start and total + count > most:
            yield range(start, index)
            start, total = index, 0
        total += count
    if rows:
        yield range(start, len(rows))


def _outcome(run: Any, inputs: Tensors) -> Outcome:
    try:
        result: dict[str, np.ndarray] = run(inputs)
    except InvalidInput as exc:
        return exc
    return result


_ORT_INVALID_ARGUMENT: type[Exception] = getattr(
    ort.capi.onnxruntime_pybind11_state, "InvalidArgument", ValueError
)
_ORT_FAILURES: tuple[type[Exception], ...] = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in ("Fail", "RuntimeException")
    if hasattr(ort.capi.onnxruntime_pybind11_state, name)
)
"""A kernel's ORT_ENFORCE or a failed status: raised as often for a request's values as for a bug."""


_SOURCE_LOCATION = re.compile(r"\S+\.(?:h|cc|cpp):\d+ (?:[^()]*\([^()]*\)(?: const)? (?:\[with [^\]]*\] )?)?")
"""Where in onnxruntime's C++ an ORT_ENFORCE failed (`/onnxruntime_src/...h:563 void ...Append(...) `):
nothing a client can act on."""


def _ort_message(exc: Exception) -> str:
    """onnxruntime's sentence without its code prefix (`[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : `)
    and without the C++ source location some carry."""
    return _SOURCE_LOCATION.sub("", str(exc).rsplit(" : ", 1)[-1].strip())


def _filled(spec: TensorSpec, rows: int, fill: int) -> np.ndarray:
    open_size = [rows] + [1] * len(spec.shape)  # the first dimension, open, holds the rows
    shape = tuple(open_size[axis] if dim is None else dim for axis, dim in enumerate(spec.shape))
    if spec.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.full(shape, fill, dtype=spec.dtype)


class _Controls:
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


class ThrottledLog:
    """One log line per `interval` seconds at the most, with how many were held back since."""

    def __init__(self, interval: float, logger: logging.Logger = log) -> None:
        self._interval = interval
        self._logger = logger
        self._logged_at = -float("inf")
        self._held = 0
        self._lock = threading.Lock()

    def error(self, message: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._logged_at < self._interval:
                self._held += 1
                return
            held, self._logged_at, self._held = self._held, now, 0
        self._logger.error(
            message + (f" ({held} more since the last line)" if held else ""),
            *args,
            exc_info=exc_info,
            stacklevel=2,  # the line is the caller's
        )


def batch_key(inputs: Tensors) -> tuple[Any, ...]:
    """Requests with equal keys can be concatenated along the first dimension."""
    return tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items()))


def concat(requests: Sequence[Tensors]) -> dict[str, np.ndarray]:
    if len(requests) == 1:
        return dict(requests[0])
    return {name: np.concatenate([request[name] for request in requests]) for name in requests[0]}


def split(
    outputs: Tensors, rows: Sequence[int], shared: frozenset[str] = frozenset()
) -> list[dict[str, np.ndarray]] | None:
    """Cut batch outputs back into per-request outputs, each request getting the `shared` ones whole;
    None when another output has no matching batch dim."""
    total = sum(rows)
    if len(rows) == 1:
        return [dict(outputs)]
    if any(name not in shared and not _leads(value, total) for name, value in outputs.items()):
        return None
    parts, start = [], 0
    for count in rows:
        parts.append(
            {
                name: value if name in shared else value[start : start + count]
                for name, value in outputs.items()
            }
        )
        start += count
    return parts


def fallback_ops(
    model: Path | bytes, *, proto: onnx.ModelProto | None = None, providers: list[str] | None = None
) -> dict[str, int]:
    """Ops meant to run quantized that fall back to float, by op type, with 0 for the types that fused.

    `proto`: `model` already parsed. The counts come from `quantship.runtime.fallback_ops` (the
    optimized graph). The zeros matter: every op type meant to run quantized gets a series, so "no
    fallback" reads as 0, not as no data.
    """
    graph = (proto if proto is not None else runtime.load_proto(model)).graph
    counts = runtime.fallback_ops(model, providers=providers)
    return {**dict.fromkeys(sorted(_meant_quantized(graph)), 0), **counts}


def _meant_quantized(graph: onnx.GraphProto) -> set[str]:
    """Op types the graph as written runs between DequantizeLinear and QuantizeLinear (QDQ groups)."""
    producer = {out: node.op_type for node in graph.node for out in node.output}
    feeds_quantize = {name for node in graph.node if node.op_type == runtime.QUANTIZE for name in node.input}
    return {
        node.op_type
        for node in graph.node
        if node.op_type not in (runtime.QUANTIZE, runtime.DEQUANTIZE)
        and any(producer.get(name) == runtime.DEQUANTIZE for name in node.input)
        and any(name in feeds_quantize for name in node.output)
    }
