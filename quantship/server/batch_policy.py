"""How many rows to merge into one onnxruntime call, measured on this model on this CPU at load.

Batching pays only where a bigger batch costs less per row: a tiny MLP runs 32 rows for 3.5x the
cost of one, but EfficientNet-Lite0 on a CPU runs 8 rows for ~8x one (measured: batching made it
slower at c=8, 27 rps against 34.5 unbatched, because rows wait for batch-mates for nothing). So the
service times calls of 1, 2, 4, ... rows up to --max-batch-size on a synthetic input and caps
batching at the largest size clearly cheaper per row than the smaller ones (`_cheapest`). The choice
and its figures go to the log and to the model's metadata (`/v2/models/{name}`). A model that runs
on one row of the synthetic input but fails on more (written for one row) is served unbatched, with
a warning that says so, as Triton serves a model whatever its batching does: each request then runs
as its own call, and one of more rows fails as it would alone (`FailsOnRows`).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from quantship.server import cpus
from quantship.server.runner import Runner
from quantship.server.runner_signature import Signature
from quantship.server.settings import SPLIT_CALL_S, SPLIT_MOST_ROWS, BatchSettings

log = logging.getLogger("quantship.server")
CHEAPER = 0.9
"""A size is worth batching to when its cost per row is below 90% of the previous size's: within
10% is noise on a busy machine, and a batch that saves less is not worth the rows' waiting."""
REPEATS = 5
"""Timed calls per size; the fastest counts (the others met the scheduler or the cache)."""
BUDGET_S = 2.0
"""Most seconds the measurement may add to loading; sizes not reached by then are not chosen."""
FILLS = (1, 0)
"""What the synthetic input is filled with, the first the model runs on: ones first, a valid mask,
token id, count and divisor (onnxruntime refuses an integer Div by 0, and a model that divides by
an input would never load); zeros where a one is out of range (an index into a table of one row)."""
ROUNDS = 3
"""Times the ladder of sizes is climbed, ROUND_GAP_S apart; each size keeps its fastest round. While
the model loads, the rest of the server starts on the event loop thread, and this VM's neighbours
come and go: on one CPU, every call overlapping such a burst takes up to twice as long, and a small
model's whole ladder (a few ms) can fall in one. Climbed once (five back-to-back calls a size, or,
tried too, calls spread over 25 ms), 5 of 14 starts of digits INT8 on one core read one row at 39-80
µs instead of 28-38, and one capped batches at 4 rows instead of 32; a burst would now have to last
through every round to mislead the choice."""
ROUND_GAP_S = 0.05
"""Seconds between rounds: longer than a burst of the server's own start, short enough for loading."""
LOOKAHEAD = 2
"""Sizes a climb times past the cheapest so far before it stops, where their calls are short
(LOOKAHEAD_CALL_S): one size looked dear in every round and stopped every climb there. A server
starting beside four busy processes on 2 CPUs (load 5-8) chose 1 to 4 rows for digits INT8, whose 32
rows cost a tenth of one row's each, in 4 of 95 starts (2026-12-08); one timed {1: 12.9, 2: 11.9} µs
a row, and batching was off for the pod's life. Looking one size further: 0 of 80, beside the same."""
LOOKAHEAD_CALL_S = 1e-3
"""The longest call a climb looks past when it was no cheaper per row. Where a call is this short,
its fixed cost (tens of µs) is much of it and a larger batch almost always saves, so a flat step is
more likely a burst; where it takes milliseconds, the rows' own work dominates and a flat step is
the model's. EfficientNet-Lite0 FP32 (2 threads, 3.5-5 ms a row as the load went 4 to 6), looking
past every flat size: 1-2.7 s of its load against 0.4-0.6, and a choice that swung between 1, 2 and
4 rows with the load (the old climb's, between 1 and 2)."""
UNMEASURED_SPLIT_ROWS = BatchSettings.max_batch_size
"""The fewest rows a call of a split request takes where no call was timed (a sequence model)."""
INLINE_CALL_S = 100e-6
"""A call measured this short runs on the event loop instead of the inference thread: handing it to
the thread and back (a queue, two wake-ups, the loop's self-pipe) costs more CPU than the call.
Measured on digits INT8 (a ~15 µs call), inline saved 50-70 µs of server CPU per request at
concurrency 1. Anything longer goes to the thread, so that the loop keeps reading requests while
onnxruntime (which releases the GIL) runs. Decided per call by its rows, not once for the largest
batch: on a slower CPU digits INT8 takes 36-72 µs for one row but 110-190 µs for 32, and a server
at concurrency 1 (one-row calls) should not pay the hand-off because full batches would."""
ALONE_CALL_S = 0.05
"""A request that comes alone (batcher.LONE_BATCHES) runs on the event loop for calls up to this
long, whatever INLINE_CALL_S says: with nothing to overlap, the hand-off to the thread and back only
costs. An MLP 784-2048-2048-10 at c=1 on one core (0.7 ms a call): -12-15% CPU a request, +13-18%
req/s. EfficientNet-Lite0 INT8 on 2 CPUs, 2 intra-op threads, gRPC at c=1 (a 3 ms call): a lower p99
in 19 of 19 interleaved rounds over four runs of three forms of the rule (2026-12-04), and with its
probes spaced by time as well, p99 9.6 against 10.4 ms (batcher.PROBE_AFTER_RUNS). With more than
one CPU, a call on the loop would hold back a concurrent request's reading and decoding, which the
thread overlaps with it (6-10% fewer req/s at c=2 in sessions 15 and 16, where such requests ran on
the loop in turn), so the batcher probes for concurrency there (batcher.PROBE_AFTER_RUNS); with one
CPU, running them in turn on the loop was the faster (MLP c=2: 518-624 against 396-547 req/s through
the thread). Longer calls still go to the thread: the loop must answer health probes while a long
call runs."""


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    """Rows per onnxruntime call, at most: what the batcher uses."""
    reason: str
    seconds_per_row: dict[int, float] = field(default_factory=dict)
    """The measured cost of one row at each batch size tried."""
    inline_rows: int = 0
    """Calls of at most this many rows run on the event loop (the largest measured size whose call
    took no longer than INLINE_CALL_S); 0: every call goes to the inference thread."""
    alone_rows: int = 0
    """A request that comes alone runs on the event loop up to this many rows: the largest measured
    size whose call fits ALONE_CALL_S, or inline_rows if more."""
    overlap: bool = True
    """More than one CPU to run on: a call in the inference thread overlaps with the event loop's
    work, so the batcher probes for concurrency behind calls on the loop (batcher.PROBE_AFTER_RUNS)."""
    split_rows: int = 0
    """A request of more rows than this runs in consecutive calls of at most this many, its outputs
    joined (`Runner.run_split`), so that onnxruntime's memory is bounded by a full batch, not by the
    request: max_batch_size where a request's rows are independent of each other, or the rows of a
    SPLIT_CALL_S call where that is more (a batch of one row of a fast model); 1 where its rows mix
    (ROWS_MIX): each row alone, as the gate judged it. 0 where a request must run in one call, as it
    would alone: an output lacks the batch dimension (UNSPLIT), the model has none, or it fails on
    more rows than one."""

    def summary(self) -> str:
        """The policy in a phrase, for the log."""
        text = f"up to {_rows(self.max_batch_size)} ({self.reason})"
        if self.inline_rows:
            text += f", calls of up to {_rows(self.inline_rows)} on the event loop"
        if self.alone_rows > self.inline_rows:
            text += f", up to {_rows(self.alone_rows)} for a request that comes alone"
            text += " (probing for concurrency)" if self.overlap else " (one CPU)"
        text += (
            f"; a larger request in calls of {_rows(self.split_rows)}"
            if self.split_rows
            else "; a larger request in one call"
        )
        return text

    def describe(self) -> dict[str, object]:
        return {
            "max_batch_size": self.max_batch_size,
            "reason": self.reason,
            "inline_rows": self.inline_rows,
            "alone_rows": self.alone_rows,
            "overlap": self.overlap,
            "split_rows": self.split_rows,
            "microseconds_per_row": {
                str(size): round(cost * 1e6, 1) for size, cost in self.seconds_per_row.items()
            },
        }


ROWS_MIX = (
    "not batched: dynamic quantization takes one scale over a call's rows, so each row runs alone, as "
    "the accuracy gate judged it; run with others, a row's answer would depend on theirs"
)


UNSPLIT = (
    "not batched: an output without the batch dimension depends on the batch or on the values, so no "
    "merged call can answer for each request"
)


def choose(
    runner: Runner,
    configured: int,
    measure: Callable[[Runner, int], float] | None = None,
    *,
    usable_cpus: float | None = None,
) -> BatchPolicy:
    """The batch size cap for `runner`, at most `configured`. `measure(runner, rows)` gives seconds per
    row of one call (default: timed onnxruntime calls on the first of FILLS the model runs on; on
    none, batching is off); `usable_cpus` defaults to this process's (cpus.usable). A model whose
    rows mix (`runtime.rows_mix`) never merges requests and runs a request's rows one a call: a
    row's answer would otherwise depend on the rows it ran with, not be what the gate judged; nor
    does one whose outputs a merged call cannot split (`Runner.layout`, learned here, at load), nor one
    that fails on more rows than one (`FailsOnRows`)."""
    overlap = (usable_cpus if usable_cpus is not None else cpus.usable()) > 1
    signature, rows_mix = runner.signature, runner.rows_mix
    if not signature.batchable:
        return BatchPolicy(1, "the model has no batch dimension", overlap=overlap)
    unsplit = runner.layout.alone
    unmeasurable = _unmeasurable(signature)
    if unmeasurable:
        # No call timed, so no SPLIT_CALL_S floor measured: calls of at least the default batch
        # (gpt2-int8's 2000 rows at --max-batch-size 1: 376 ms in one-row calls, 99 in calls of 32)
        split_rows = runner.rows_per_call(max(configured, UNMEASURED_SPLIT_ROWS))
        if rows_mix or unsplit:
            # Never merged whatever a measurement would say: a sequence model quantized dynamically
            # (the tuner's choice for transformers) has open dimensions besides the batch.
            reason = ROWS_MIX if rows_mix else UNSPLIT
            return BatchPolicy(1, reason, overlap=overlap, split_rows=0 if unsplit else split_rows)
        return BatchPolicy(
            configured, f"not measured: {unmeasurable}", overlap=overlap, split_rows=split_rows
        )
    fill, failure = _runnable_fill(runner)
    if fill is None:
        reason = f"not measured: the model fails on inputs of {' and of '.join(map(str, FILLS))} ({failure})"
        return BatchPolicy(1, reason, overlap=overlap)
    measure = measure if measure is not None else functools.partial(_seconds_per_row, fill=fill)
    split = not unsplit
    if rows_mix or unsplit or configured == 1:
        reason = ROWS_MIX if rows_mix else UNSPLIT if unsplit else "--max-batch-size 1"
        costs, chosen = {1: measure(runner, 1)}, 1
    else:
        try:
            costs, chosen = _measure_sizes(runner, configured, measure)
            reason = (
                f"measured: {chosen} rows are the cheapest per row"
                if chosen > 1
                else "measured: no batch size is cheaper per row than one row"
            )
        except FailsOnRows as failure:
            reason = f"not batched: {failure}"
            log.warning("the model cannot be batched, so each request runs alone: %s", failure)
            costs, chosen, split = {1: measure(runner, 1)}, 1, False
    inline_rows = _rows_within(costs, chosen, INLINE_CALL_S)
    alone_rows = max(inline_rows, _rows_within(costs, chosen, ALONE_CALL_S))
    one_row = costs.get(1, 0.0)
    fixed_cost_rows = min(math.ceil(SPLIT_CALL_S / one_row), SPLIT_MOST_ROWS) if one_row > 0 else chosen
    split_rows = runner.rows_per_call(max(chosen, fixed_cost_rows)) if split else 0
    return BatchPolicy(chosen, reason, costs, inline_rows, alone_rows, overlap, split_rows)


def _unmeasurable(signature: Signature) -> str:
    """Why a synthetic input cannot stand for real ones ('' if it can), a reason for each kind of input:
    an open dimension besides the batch (a sequence: the synthetic one has length 1), strings (BYTES:
    the synthetic ones are empty)."""
    reasons = []
    open_dims = [spec.name for spec in signature.inputs if None in spec.shape[1:]]
    if open_dims:
        reasons.append(f"inputs with open dimensions besides the batch ({', '.join(open_dims)})")
    strings = [spec.name for spec in signature.inputs if spec.datatype == "BYTES"]
    if strings:
        reasons.append(f"string (BYTES) inputs, whose cost depends on their contents ({', '.join(strings)})")
    return "; ".join(reasons)


def _measure_sizes(
    runner: Runner, configured: int, measure: Callable[[Runner, int], float]
) -> tuple[dict[int, float], int]:
    """Seconds per row at 1, 2, 4, ... rows, the fastest of ROUNDS climbs, and the size to batch up
    to (`_cheapest`). Each climb stops past the cheapest so far (`_climbed_past`), and a later round
    climbs past a size a burst made look dear."""
    costs: dict[int, float] = {}
    deadline = time.perf_counter() + BUDGET_S
    for round_ in range(ROUNDS):
        if round_:
            time.sleep(ROUND_GAP_S)
        for size in _ladder(configured):
            if time.perf_counter() >= deadline:
                break
            costs[size] = min(measure(runner, size), costs.get(size, float("inf")))
            if _climbed_past(costs, size):
                break
    return costs, _cheapest(costs)


def _climbed_past(costs: dict[int, float], size: int) -> bool:
    """Whether a climb that has just timed `size` has gone far enough past the cheapest size so far:
    LOOKAHEAD sizes, or one whose call took LOOKAHEAD_CALL_S or more."""
    cheapest = _cheapest(costs)
    past = sum(cheapest < timed <= size for timed in costs)
    return past >= LOOKAHEAD or (past > 0 and costs[size] * size >= LOOKAHEAD_CALL_S)


def _ladder(configured: int) -> list[int]:
    """1, 2, 4, ... up to `configured`, which is tried even if it is not a power of two."""
    sizes = [1]
    while sizes[-1] < configured:
        sizes.append(min(sizes[-1] * 2, configured))
    return sizes


def _cheapest(costs: dict[int, float]) -> int:
    """Climbing the measured sizes in order, the last one clearly cheaper per row than the size chosen
    before it: a size no cheaper is passed over, not the end of the climb, so a larger one that is
    cheaper still counts."""
    chosen = 1
    for size in sorted(costs)[1:]:
        if costs[size] < CHEAPER * costs[chosen]:
            chosen = size
    return chosen


def _rows_within(costs: dict[int, float], cap: int, seconds: float) -> int:
    """The largest measured size, up to `cap`, whose whole call fits `seconds` (0 if none). A call of
    fewer rows costs no more than that one, so every call up to it fits too."""
    fitting = [size for size, per_row in costs.items() if size <= cap and per_row * size <= seconds]
    return max(fitting, default=0)


def _runnable_fill(runner: Runner) -> tuple[int | None, str]:
    """The first of FILLS whose one-row input the model runs on, or None and the last failure."""
    failure = ""
    for fill in FILLS:
        refusal = runner.refusal(runner.filled(1, fill))
        if refusal is None:
            return fill, ""
        failure = refusal
    return None, failure


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


class FailsOnRows(Exception):
    """The model fails on a synthetic input of more rows than one, where it runs on one row: a graph
    written for one row (a Reshape to a fixed shape). Any merged call could fail the same way, and
    the sizes between those measured are never tried, so such a model is not batched at all."""

    def __init__(self, rows: int, refusal: str) -> None:
        super().__init__(f"the model fails on {rows} rows, though it runs on one ({refusal})")


def _seconds_per_row(runner: Runner, rows: int, *, fill: int) -> float:
    inputs = runner.filled(rows, fill)
    refusal = runner.refusal(inputs)  # warm-up: the first call at a new shape plans memory
    if refusal is not None:
        raise FailsOnRows(rows, refusal)
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        runner.run(inputs)
        best = min(best, time.perf_counter() - started)
    return best / rows
