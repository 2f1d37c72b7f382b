"""The model as onnxruntime runs it: its signature, input validation against it, and the call.

The service builds one Runner per session (served INT8 model, FP32 reference, clip observer) from
`quantship.runtime.create_session`, so the server runs the kernels the accuracy gate judged. The
batcher and the background workers merge requests with `concat` and `split`, cutting back only the
outputs the model's `BatchLayout` says carry the batch: decided once, from the declared output shapes
and, where they leave it open, probe calls, never from the sizes of one merged call (a NonZero's
count can equal its rows by chance). Knows nothing of HTTP.
"""

from __future__ import annotations

import collections
import dataclasses
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
from quantship.server.runner_graph import index_tables, value_free_outputs
from quantship.server.runner_signature import Signature, Tensors, TensorSpec
from quantship.server.settings import SPLIT_CALL_S
from quantship.server.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

CONTROL_INTERVAL_S = 1.0
"""How long a control run's verdict stands for requests of one shape (see `_Controls`)."""
CONTROL_SHAPES = 64
"""Shapes whose verdicts are kept at once."""

FAILURE_LOG_INTERVAL_S = 10.0
"""A failing model logs one line per this many seconds, with the count of failures since."""


class Runner:
    """One onnxruntime session. `run` is blocking: call it from a worker thread, or on the event loop
    only for calls measured shorter than a thread hand-off (batch_policy.INLINE_CALL_S)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        value_free: frozenset[str] = frozenset(),
        tables: Mapping[str, int] | None = None,
        *,
        rows_mix: bool = False,
    ) -> None:
        """`value_free`: outputs computed from no input's values (see `value_free_outputs`); only
        those may be shared by the requests of a merged call when they have no batch dimension.
        `tables`: the rows of the table each index input gathers from (`index_tables`).
        `rows_mix`: a row's outputs depend on the other rows of its call (`runtime.rows_mix`), so
        each row runs alone, as the accuracy gate judged it (`run_batch`, `SplitRun`)."""
        self.session = session
        self.signature = Signature.from_session(session, tables)
        self._value_free = value_free
        self.rows_mix = rows_mix
        self._layout: BatchLayout | None = None
        self._undecidable: set[tuple[tuple[str, tuple[int, ...]], ...]] = (
            set()
        )  # request shapes probed in vain
        self._told_undecidable = False
        self._output_names = [spec.name for spec in self.signature.outputs]
        self._run_options = ort.RunOptions()
        # A refused input is answered 400; onnxruntime's own error log of it would be noise.
        self._run_options.log_severity_level = 4
        self._controls = _Controls(self._call)
        self._failures = ThrottledLog(FAILURE_LOG_INTERVAL_S, log)

    @classmethod
    def load(
        cls, model: Path | bytes, *, threads: int | None = None, proto: onnx.ModelProto | None = None
    ) -> Runner:
        """A session of `model`; `proto`, its graph when the caller has parsed it already."""
        session = runtime.create_session(model, threads=threads)  # first: onnxruntime names what is wrong
        proto = proto or runtime.load_proto(model)
        return cls(
            session,
            value_free_outputs(proto.graph),
            index_tables(proto.graph),
            rows_mix=runtime.rows_mix(proto),
        )

    def run(self, inputs: Tensors) -> dict[str, np.ndarray]:
        try:
            values = self._call(inputs)
        except _ORT_INVALID_ARGUMENT as exc:  # e.g. a token id past the vocabulary: the client's to fix
            raise InvalidInput(f"the model refused the input: {_ort_message(exc)}") from None
        except _ORT_FAILURES as exc:  # a kernel's FAIL names no culprit: an index past a gather's axis?
            if (empty := _empty_input(inputs)) is not None:
                raise InvalidInput(f"the model could not run on {empty}: {_ort_message(exc)}") from None
            if self._controls.values_at_fault(inputs):
                raise InvalidInput(f"the model could not run on the input: {_ort_message(exc)}") from None
            self._failures.log("onnxruntime failed, on ones of the same shapes too: %s", exc)
            raise InferenceFailed(f"onnxruntime failed: {_ort_message(exc)}") from exc
        except Exception as exc:  # onnxruntime's other pybind types (none with a common base), or ours
            self._failures.log("onnxruntime failed: %s", exc)
            raise InferenceFailed(f"onnxruntime failed: {_ort_message(exc)}") from exc
        return dict(zip(self._output_names, values, strict=True))

    def rows_per_call(self, most: int) -> int:
        """The most rows a call of one request takes, given `most` (0: no limit): one where the rows
        mix, as the accuracy gate judged them; the one rule for the batch policy, `run_batch` (the
        background sessions) and `SplitRun`."""
        return 1 if self.rows_mix else most

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
        larger request alone, split into such calls by `run_split`), and split the results. Raises the
        first request's InvalidInput, if any (for the background sessions)."""
        outcomes: list[Outcome] = []
        for chunk in _row_chunks(rows, max_rows):
            outcomes += self.run_batch(
                [requests[i] for i in chunk], [rows[i] for i in chunk], split_rows=max_rows
            )
        for outcome in outcomes:
            if isinstance(outcome, InvalidInput):
                raise outcome
        return outcomes  # type: ignore[return-value]  # no InvalidInput left

    def run_batch(
        self,
        requests: Sequence[Tensors],
        rows: Sequence[int],
        *,
        split_rows: int = 0,
        calls: list[int] | None = None,
        keys: Sequence[tuple[Any, ...]] | None = None,
    ) -> list[Outcome]:
        """Each request's outputs, or the InvalidInput that request alone caused (a token id past the
        vocabulary): one bad request in a merged call must not fail the others, so its group is rerun
        one request at a time. Requests merge only where the `layout` can answer for each of them;
        otherwise they run alone. A lone request of more than `split_rows` rows (0: no limit) runs in
        calls of at most that many (`run_split`). `calls`: the rows of each call made are appended
        there, failed ones too (what the batch-size histogram records; probes and control runs are
        not the requests' calls). `keys`: each request's `batch_key`, where the caller has made them
        already (the batcher, to form the batch: ~1.5 µs a request not spent twice). A model whose rows
        mix runs every row alone, merged with none."""
        made = calls if calls is not None else []
        split_rows = self.rows_per_call(split_rows)
        if len(requests) == 1 or self.rows_mix:
            return [
                self._run_alone(request, count, split_rows, made)
                for request, count in zip(requests, rows, strict=True)
            ]
        results: list[Outcome | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = collections.defaultdict(list)
        for index, request in enumerate(requests):
            if not self.signature.batchable:
                key: tuple[Any, ...] = ("alone", index)
            else:
                key = keys[index] if keys is not None else batch_key(request)
            groups[key].append(index)
        for indices in groups.values():
            layout = self.layout_for(requests[indices[0]]) if len(indices) > 1 else None
            if layout is not None and layout.alone:
                for index in indices:  # outputs no merged call can answer for each request
                    results[index] = self._run_counted(requests[index], rows[index], made)
                continue
            made.append(sum(rows[i] for i in indices))
            try:
                merged = self.run(concat([requests[i] for i in indices]))
            except (InvalidInput, InferenceFailed):  # whichever request caused it fails alone
                for index in indices:
                    results[index] = self._run_counted(requests[index], rows[index], made)
                continue
            parts = split(merged, [rows[i] for i in indices], layout) if layout is not None else [merged]
            if parts is None:  # a batch output did not lead with the rows after all: run each alone
                parts = []
                for index in indices:
                    made.append(rows[index])
                    parts.append(self.run(requests[index]))
            for index, part in zip(indices, parts, strict=True):
                results[index] = part
        return [result for result in results if result is not None]

    def _run_alone(self, request: Tensors, rows: int, split_rows: int, made: list[int]) -> Outcome:
        """The request's outcome from calls of its own: of at most `split_rows` rows (0: one call)."""
        if 0 < split_rows < rows:
            return _outcome(
                functools.partial(self.run_split, rows=rows, most=split_rows, calls=made), request
            )
        return self._run_counted(request, rows, made)

    def _run_counted(self, request: Tensors, rows: int, made: list[int]) -> Outcome:
        """The request's outcome from a call of its own, its rows appended to `made` (`run_batch`)."""
        made.append(rows)
        return _outcome(self.run, request)

    def run_split(
        self, request: Tensors, *, rows: int, most: int, calls: list[int] | None = None
    ) -> dict[str, np.ndarray]:
        """One request's outputs from consecutive calls of at most `most` rows (`SplitRun`), run here
        one after the other (the background sessions); the batcher runs them one `step` at a time.
        `calls`: as `run_batch`'s."""
        run = SplitRun(self, request, rows, most)
        try:
            while not run.done:
                run.step()
        finally:
            if calls is not None:
                calls += run.calls
        return run.outputs

    @property
    def layout(self) -> BatchLayout:
        """Which outputs a merged call cuts back into each request's rows and which it gives each
        request whole: from the declared shapes (`declared_batch_outputs`), and for the outputs they
        leave open, from probe calls on filled inputs (once; the batch policy asks at load). A model
        whose outputs all declare the inputs' batch dimension makes no call for it. `undecided` where
        the filled inputs do not suit the model (an open dimension besides the batch that size 1
        does not fit): the first merged call decides, with probes shaped as its requests."""
        if self._layout is None:  # two threads may both probe: the same calls, the same answer
            self._layout = self._decide_layout(None)
        return self._layout

    def layout_for(self, request: Tensors) -> BatchLayout:
        """The layout, decided by probes shaped as `request` while it is undecided. Only a decided
        layout is kept: a group whose shapes the model refuses runs alone, and the next one probes
        again (a first client's bad widths must not stop every later merge)."""
        layout = self.layout
        if not layout.undecided:
            return layout
        shapes = {name: tuple(value.shape[1:]) for name, value in request.items()}
        key = tuple(sorted(shapes.items()))
        if key in self._undecidable:  # probed at these shapes already, in vain: no probe calls again
            return dataclasses.replace(layout, alone=True)
        shaped = self._decide_layout(shapes)
        if shaped.undecided:
            if len(self._undecidable) < UNDECIDABLE_SHAPES:
                self._undecidable.add(key)
            if not self._told_undecidable:
                self._told_undecidable = True
                log.warning(
                    "outputs %s do not declare the batch dimension, and the model runs on fewer than two "
                    "probe fills at the shapes of its requests (%s): these requests run alone",
                    ", ".join(map(repr, sorted(frozenset(self._output_names) - layout.batched))),
                    shapes,
                )
            return dataclasses.replace(shaped, alone=True)
        self._layout = shaped  # two threads may both decide: from shapes the model runs on, alike
        return shaped

    def _decide_layout(self, shapes: Mapping[str, tuple[int, ...]] | None) -> BatchLayout:
        """Outputs left open by their declared shapes that lead with the rows in every probe run, of
        at least two fills, carry the batch; the others are shared where value-free
        (`value_free_outputs`) and equal in every run; if any is neither, requests run alone. With
        fewer than two fills the model runs on at these `shapes` (None: 1 where open), nothing is
        decided: one fill whose values decide a count (NonZero of ones) could lead with the rows by
        chance."""
        batched = declared_batch_outputs(self.signature)
        undecided = frozenset(self._output_names) - batched
        if not undecided:
            return BatchLayout(batched, frozenset(), alone=False)
        fills, runs = self._probe_runs(shapes)
        if fills < 2:
            return BatchLayout(batched, frozenset(), alone=False, undecided=True)
        leading = frozenset(name for name in undecided if all(_leads(out[name], n) for n, out in runs))
        first = runs[0][1]
        shared = frozenset(
            name
            for name in undecided - leading
            if name in self._value_free and all(_same(out[name], first[name]) for _, out in runs)
        )
        unshared = undecided - leading - shared
        if unshared:
            log.info(
                "outputs %s lack a batch dimension and depend on the batch or the values: requests run alone",
                ", ".join(map(repr, sorted(unshared))),
            )
        return BatchLayout(batched | leading, shared, alone=bool(unshared))

    def _probe_runs(
        self, shapes: Mapping[str, tuple[int, ...]] | None
    ) -> tuple[int, list[tuple[int, dict[str, np.ndarray]]]]:
        """How many of PROBE_FILLS the model runs on at every one of PROBE_ROWS, and (rows, outputs)
        of those runs; each input's dimensions past the batch from `shapes`, else 1 where open."""
        fills = 0
        runs: list[tuple[int, dict[str, np.ndarray]]] = []
        for fill in PROBE_FILLS:
            inputs = [
                {
                    spec.name: _probe_tensor(
                        spec, rows, fill, None if shapes is None else shapes.get(spec.name)
                    )
                    for spec in self.signature.inputs
                }
                for rows in PROBE_ROWS
            ]
            try:
                outputs = [dict(zip(self._output_names, self._call(i), strict=True)) for i in inputs]
            except Exception:  # any of onnxruntime's pybind types: this fill is out of the model's range
                continue
            fills += 1
            runs += zip(PROBE_ROWS, outputs, strict=True)
        return fills, runs


class SplitRun:
    """One request's outputs from consecutive calls of at most `most` rows, written into outputs of
    all its rows as they come: onnxruntime's intermediate memory is a full batch's, not
    the request's (gpt2-lm, 4000 rows in one call: 2.7 GB); for a model whose rows mix, one row a
    call whatever `most` says, as the accuracy gate judged them (batch_policy.ROWS_MIX). One whose
    `layout` cannot join calls, or an output that turns out not to lead with a call's rows, runs in
    one call, as it would alone.
    Run a `step` at a time (blocking: in a worker thread), so that the batcher can run the requests
    that wait between two calls, and stop once nobody waits for the answer."""

    def __init__(self, runner: Runner, request: Tensors, rows: int, most: int) -> None:
        self._runner = runner
        self._request = request
        self._rows = rows
        self._most = runner.rows_per_call(most)
        self._start = 0
        self._layout: BatchLayout | None = None
        self.outputs: dict[str, np.ndarray] = {}
        self.done = False
        self.calls: list[int] = []
        """The rows of each call made so far, failed ones too: what the batch-size histogram records."""

    def step(self) -> None:
        """Make the next call (the first decides the layout; a fallback makes the whole request's); for
        a model whose rows mix, one-row calls for SPLIT_CALL_S (a hand-off a row costs more than its call)."""
        if self._layout is None:
            self._layout = self._runner.layout_for(self._request)
            if self._layout.alone:
                self._whole()
                return
        turn_ends = time.perf_counter() + (SPLIT_CALL_S if self._runner.rows_mix else 0.0)
        self._call(self._layout)
        while not self.done and time.perf_counter() < turn_ends:
            self._call(self._layout)

    def _call(self, layout: BatchLayout) -> None:
        """The call of the next rows, written into the outputs (a fallback: the whole request's)."""
        count = min(self._most, self._rows - self._start)
        start = self._start
        self.calls.append(count)
        part = self._runner.run({name: value[start : start + count] for name, value in self._request.items()})
        if not all(_leads(part[name], count) for name in layout.batched):
            self._whole()
            return
        for name, value in part.items():
            if name not in layout.batched:
                self.outputs.setdefault(name, value)  # shared: the same for every call
                continue
            if name not in self.outputs:
                self.outputs[name] = np.empty((self._rows, *value.shape[1:]), dtype=value.dtype)
            self.outputs[name][start : start + count] = value
        self._start += count
        self.done = self._start >= self._rows

    def _whole(self) -> None:
        self.calls.append(self._rows)
        self.outputs = self._runner.run(self._request)
        self.done = True


@dataclass(frozen=True)
class BatchLayout:
    """How the outputs of a merged call go back to its requests."""

    batched: frozenset[str]
    """Outputs whose first dimension is the batch: each request gets its rows."""
    shared: frozenset[str]
    """Outputs without it that every request of a merged call gets whole (value-free and the same
    whatever the rows: a static transformer's position embeddings, a list of class ids)."""
    alone: bool
    """Some output is neither: no merged call can answer for each request, so requests never merge."""
    undecided: bool = False
    """Not known yet: the first merged call decides (`Runner.layout`)."""


PROBE_ROWS = (1, 2, 3)
"""Row counts of the layout probe: an undeclared output that leads with the rows at each carries the batch."""
PROBE_FILLS: tuple[int | None, ...] = (1, 0, None)
"""What the probe's inputs hold: ones, zeros (as batch_policy.FILLS), and None: values of both signs
and no zero, that differ from element to element (`_probe_tensor`), so that a leading dimension the
values decide (NonZero's count) is unlikely to equal the rows in every run, and a model that refuses
zeros (an integer Div) still runs two fills. Fills the model fails on are skipped."""
UNDECIDABLE_SHAPES = 64
"""Request shapes remembered as probed in vain (each would cost the probe's calls again): at most this
many, so that a client's odd widths do not grow the set without end."""
PROBE_SEED = 20261205
"""The scattered fill's values come from this seed: the same probe, the same layout, on every load."""


def declared_batch_outputs(signature: Signature) -> frozenset[str]:
    """Outputs whose declared first dimension has the name of the inputs' first (batch) dimension. A
    fixed first dimension is no batch; an unnamed one, or one named otherwise (NonZero's `K`), is
    left to the probe."""
    batch_names = {spec.dim_names[0] for spec in signature.inputs if spec.dim_names and spec.dim_names[0]}
    return frozenset(
        spec.name for spec in signature.outputs if spec.dim_names and spec.dim_names[0] in batch_names
    )


def _leads(value: np.ndarray, rows: int) -> bool:
    return value.ndim > 0 and value.shape[0] == rows


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


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


def _empty_input(inputs: Tensors) -> str | None:
    """The request's first input, named for the message, where every input holds no values (an
    empty sequence: its ids and its mask `[1, 0]`; no rows is refused before any call:
    `Signature.validate`); None otherwise. A model that cannot run an empty request fails on ones of
    its shape too, which would make it a 500 (`_Controls`): but an empty request is the client's to
    change (a tokenizer's empty string), and a 500 would burn the error budget of a canary that
    behaves as its stable does (hunt of 2026-12-06: gpt2 answered `[1, 0]` ids with a Reshape's
    FAIL). Where some input holds values (a KV cache's first step: its past empty, its ids not), a
    failure is judged as any other, so a canary broken there still counts as failing."""
    if not inputs or any(array.size for array in inputs.values()):
        return None
    name, array = next(iter(inputs.items()))
    return f"input '{name}' of shape {list(array.shape)}, which holds no values"


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


def _probe_tensor(spec: TensorSpec, rows: int, fill: int | None, tail: tuple[int, ...] | None) -> np.ndarray:
    """`rows` rows of `fill` (`_filled`; for BYTES "1" or ""), each shaped `tail` where given; for
    fill None, scattered values: of both signs, never 0, in no pattern a stride could line up (a
    column of a row-major tensor must hold both signs as well): -3 to 3 from a fixed seed (1 to 5
    for unsigned types, False and True for BOOL, numbers of several lengths as strings for BYTES: a
    model that parses them runs on two fills)."""
    shape = _filled(spec, rows, 0).shape if tail is None else (rows, *tail)
    random = np.random.default_rng(PROBE_SEED)
    if spec.datatype == "BYTES":  # three fills that differ: "1", "", and numbers of several lengths
        if fill is not None:
            return np.full(shape, str(fill) if fill else "", dtype=object)
        return random.choice(np.array(["-2", "13", "0.5", "7", "-1.25"], dtype=object), shape)
    if fill is not None:
        return np.full(shape, fill, dtype=spec.dtype)
    kind = spec.dtype.kind
    if kind == "b":
        values = random.integers(0, 2, shape).astype(bool)
    elif kind == "u":
        values = random.integers(1, 6, shape)
    else:
        values = random.integers(1, 4, shape) * random.choice([-1, 1], shape)
    return values.astype(spec.dtype)


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


def batch_key(inputs: Tensors) -> tuple[Any, ...]:
    """Requests with equal keys can be concatenated along the first dimension. Made for every batched
    request: dtypes compare by kind, size and byte order as their `.str` does, without building it,
    and a list comprehension makes the tuple faster than a generator (1.42 -> 0.55 µs in a loop)."""
    return tuple([(name, array.dtype, array.shape[1:]) for name, array in sorted(inputs.items())])


def concat(requests: Sequence[Tensors]) -> dict[str, np.ndarray]:
    if len(requests) == 1:
        return dict(requests[0])
    return {name: np.concatenate([request[name] for request in requests]) for name in requests[0]}


def split(outputs: Tensors, rows: Sequence[int], layout: BatchLayout) -> list[dict[str, np.ndarray]] | None:
    """Cut a merged call's outputs back into each request's: its rows of the `layout`'s batched
    outputs, and its shared ones whole; None when a batched output does not lead with the call's rows
    (the layout is never `alone` here: such requests do not merge)."""
    total = sum(rows)
    if not all(_leads(outputs[name], total) for name in layout.batched):
        return None
    parts, start = [], 0
    for count in rows:
        parts.append(
            {
                name: value[start : start + count] if name in layout.batched else value
                for name, value in outputs.items()
            }
        )
        start += count
    return parts
