"""The model as onnxruntime runs it: one session, its calls, and merged requests cut back apart.

The service builds one Runner per session (served INT8 model, FP32 reference, clip observer) from
`quantship.runtime.create_session`, so the server runs the kernels the accuracy gate judged. The
batcher and the background workers merge requests with `runner_layout.concat` and `split`, cutting
back only the outputs the model's `BatchLayout` says carry the batch: decided once, from the declared
output shapes and, where they leave it open, probe calls, never from the sizes of one merged call (a
NonZero's count can equal its rows by chance). Knows nothing of HTTP.

Its parts: runner_signature (the model's inputs and outputs, and a request checked against them),
runner_graph (what the ONNX graph says before any call), runner_layout (how merged calls split back,
and the probes that decide it), runner_failures (whether a failed call is the client's or the model's).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from quantship import runtime
from quantship.choices import ONNXRUNTIME_SPINNING
from quantship.server.errors import InferenceFailed, InvalidInput
from quantship.server.runner_failures import (
    ORT_FAILURES,
    ORT_INVALID_ARGUMENT,
    Controls,
    empty_input,
    ort_message,
)
from quantship.server.runner_graph import index_tables, value_free_outputs
from quantship.server.runner_layout import (
    UNDECIDABLE_SHAPES,
    BatchLayout,
    batch_key,
    concat,
    decide_layout,
    filled_tensor,
    leads,
    split,
)
from quantship.server.runner_signature import Signature, Tensors
from quantship.server.settings import SPLIT_CALL_S
from quantship.server.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

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
        self._controls = Controls(self._call)
        self._failures = ThrottledLog(FAILURE_LOG_INTERVAL_S, log)

    @classmethod
    def load(
        cls,
        model: Path | bytes,
        *,
        threads: int | None = None,
        spinning: bool = ONNXRUNTIME_SPINNING,
        proto: onnx.ModelProto | None = None,
    ) -> Runner:
        """A session of `model`; `proto`, its graph when the caller has parsed it already."""
        # first: onnxruntime names what is wrong
        session = runtime.create_session(model, threads=threads, spinning=spinning)
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
        except ORT_INVALID_ARGUMENT as exc:  # e.g. a token id past the vocabulary: the client's to fix
            raise InvalidInput(f"the model refused the input: {ort_message(exc)}") from None
        except ORT_FAILURES as exc:  # a kernel's FAIL names no culprit: an index past a gather's axis?
            if (empty := empty_input(inputs)) is not None:
                raise InvalidInput(f"the model could not run on {empty}: {ort_message(exc)}") from None
            if self._controls.values_at_fault(inputs):
                raise InvalidInput(f"the model could not run on the input: {ort_message(exc)}") from None
            self._failures.log("onnxruntime failed, on ones of the same shapes too: %s", exc)
            raise InferenceFailed(f"onnxruntime failed: {ort_message(exc)}") from exc
        except Exception as exc:  # onnxruntime's other pybind types (none with a common base), or ours
            self._failures.log("onnxruntime failed: %s", exc)
            raise InferenceFailed(f"onnxruntime failed: {ort_message(exc)}") from exc
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
            return ort_message(exc)
        return None

    def _call(self, inputs: Tensors) -> list[Any]:
        return self.session.run(self._output_names, dict(inputs), self._run_options)

    def filled(self, rows: int, fill: int) -> dict[str, np.ndarray]:
        """An input of `fill` everywhere (empty strings for BYTES): `rows` rows where the first
        dimension is open, 1 in every other open dimension: what the batch policy times."""
        return {spec.name: filled_tensor(spec, rows, fill) for spec in self.signature.inputs}

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
            self._layout = decide_layout(self.signature, self._value_free, self._call, None)
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
        shaped = decide_layout(self.signature, self._value_free, self._call, shapes)
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
        if not all(leads(part[name], count) for name in layout.batched):
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
