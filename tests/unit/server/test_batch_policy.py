"""The batching policy: batch only up to the size that is still clearly cheaper per row. The decision is
tested on given cost tables (timings would make it flaky); the timing itself on a real session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tiny_models import build_with_text

from quantship.server import batch_policy
from quantship.server.runner import Runner
from quantship.server.settings import SPLIT_MOST_ROWS

TinyModel = Callable[..., Runner]


def table(costs: dict[int, float]) -> Callable[[Runner, int], float]:
    return lambda runner, rows: costs[rows]


@pytest.mark.parametrize(
    ("costs", "configured", "chosen"),
    [
        ({1: 10.0, 2: 5.0, 4: 2.5, 8: 1.3, 16: 0.7, 32: 0.4}, 32, 32),  # a tiny MLP: always cheaper
        ({1: 10.0, 2: 10.5}, 32, 1),  # a CNN on a CPU: two rows cost twice one
        ({1: 10.0, 2: 6.0, 4: 4.0, 8: 3.9}, 32, 4),  # cheaper until 4, then flat: capped there
        ({1: 10.0, 2: 6.0, 4: 4.0, 6: 3.0}, 6, 6),  # the configured size is tried even if not a power of 2
    ],
    ids=["always cheaper", "never cheaper", "flat past 4", "odd maximum"],
)
def test_the_cap_is_the_last_size_clearly_cheaper_per_row(
    tiny_model: TinyModel, costs: dict[int, float], configured: int, chosen: int
) -> None:
    policy = batch_policy.choose(tiny_model(), configured, table(costs))
    assert policy.max_batch_size == chosen
    assert set(policy.seconds_per_row) <= set(costs)
    assert ("cheapest" in policy.reason) == (chosen > 1)


def test_models_that_cannot_batch_or_be_probed_are_not_measured(tiny_model: TinyModel) -> None:
    never = table({})  # a KeyError if consulted
    assert (
        batch_policy.choose(tiny_model(first_dim=1), 32, never).reason == "the model has no batch dimension"
    )
    open_width = batch_policy.choose(tiny_model(width="W"), 16, never)
    assert open_width.max_batch_size == 16
    assert open_width.reason == "not measured: inputs with open dimensions besides the batch (X)"
    assert open_width.split_rows == batch_policy.UNMEASURED_SPLIT_ROWS == 32
    # untimed, a large request is not split into calls of one row (gpt2-int8 ran 2.5x slower so)
    assert batch_policy.choose(tiny_model(width="W"), 1, never).split_rows == 32
    assert batch_policy.choose(tiny_model(width="W"), 64, never).split_rows == 64


@pytest.mark.parametrize(
    ("width", "reason"),
    [
        (3, "not measured: string (BYTES) inputs, whose cost depends on their contents (T)"),
        (
            "W",
            "not measured: inputs with open dimensions besides the batch (X); "
            "string (BYTES) inputs, whose cost depends on their contents (T)",
        ),
    ],
    ids=["strings only", "strings and an open width"],
)
def test_each_reason_not_to_measure_is_named_for_itself(
    tmp_path: Path, width: int | str, reason: str
) -> None:
    """A string input was said to be an input with open dimensions besides the batch."""
    runner = Runner.load(build_with_text(tmp_path / "text.onnx", width=width), threads=1)
    policy = batch_policy.choose(runner, 16, table({}))
    assert (policy.max_batch_size, policy.reason) == (16, reason)


@pytest.mark.parametrize(
    ("costs", "configured", "inline_rows"),
    [
        ({1: 15e-6, 2: 8e-6, 4: 3e-6}, 4, 4),  # digits-sized: 4 rows in 12 µs
        ({1: 60e-6, 2: 40e-6, 4: 30e-6, 8: 15e-6}, 8, 2),  # 8 rows cheapest, but only 2 rows' call fits
        ({1: 490e-6, 2: 300e-6}, 2, 0),  # an MLP's call: the thread hand-off is worth it
        ({1: 40e-6}, 1, 1),  # --max-batch-size 1 still measures one row to decide
        ({1: 40e-6, 2: 20e-6, 4: 19e-6}, 4, 2),  # 4 rows fit, but are not cheaper: batches stop at 2
    ],
    ids=["short at the cap", "long at the cap", "long call", "unbatched", "past the cap"],
)
def test_calls_shorter_than_a_thread_hand_off_run_on_the_event_loop(
    tiny_model: TinyModel, costs: dict[int, float], configured: int, inline_rows: int
) -> None:
    policy = batch_policy.choose(tiny_model(), configured, table(costs))
    assert policy.inline_rows == inline_rows
    assert policy.describe()["inline_rows"] == inline_rows


def test_the_timing_runs_real_calls_and_reports_microseconds_per_row(tiny_model: TinyModel) -> None:
    policy = batch_policy.choose(tiny_model(), 4)
    described = policy.describe()
    assert 1 <= described["max_batch_size"] <= 4
    assert set(described["microseconds_per_row"]) >= {"1", "2"}  # type: ignore[operator]
    assert all(cost > 0 for cost in described["microseconds_per_row"].values())  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("costs", "alone_rows"),
    [
        ({1: 490e-6, 2: 300e-6, 4: 260e-6}, 4),  # an MLP: alone up to the batch cap
        ({1: 15e-6, 2: 8e-6, 4: 3e-6}, 4),  # short calls run on the loop anyway (inline_rows)
        ({1: 0.02, 2: 0.015, 4: 0.013}, 2),  # batches of 4, but their 52 ms call is too long
        ({1: 0.2, 2: 0.2}, 0),  # a 200 ms call stays in the thread: the loop answers probes meanwhile
    ],
    ids=["mlp", "short calls", "long batch", "long call"],
)
def test_a_request_alone_runs_on_the_loop_up_to_a_call_of_alone_call_s(
    tiny_model: TinyModel, costs: dict[int, float], alone_rows: int
) -> None:
    policy = batch_policy.choose(tiny_model(), 4, table(costs))
    assert policy.alone_rows == alone_rows
    assert policy.describe()["alone_rows"] == alone_rows
    assert ("comes alone" in policy.summary()) is (alone_rows > policy.inline_rows)


@pytest.mark.parametrize(
    ("costs", "configured", "rows_mix", "split_rows"),
    [
        ({1: 0.02, 2: 0.015, 4: 0.013}, 4, False, 4),  # long calls: a request splits into batches of 4
        ({1: 0.004, 2: 0.0045}, 4, False, 3),  # batches of 1, but a split request's calls take ~10 ms
        ({1: 20e-6}, 1, False, 500),  # --max-batch-size 1: 32768 one-row calls took seconds, not ~20 ms
        ({1: 1e-6}, 1, False, SPLIT_MOST_ROWS),  # not 10,000: the batch-size histogram's buckets end there
        ({1: 20e-6, 2: 10e-6}, 2, True, 1),  # rows that mix: a row a call, as the gate judged them
    ],
    ids=["batches", "one-row batches", "max batch size 1", "fast rows", "rows mix"],
)
def test_a_request_larger_than_a_batch_splits_into_batches_or_into_calls_of_split_call_s(
    tiny_model: TinyModel, costs: dict[int, float], configured: int, rows_mix: bool, split_rows: int
) -> None:
    policy = batch_policy.choose(tiny_model(rows_mix=rows_mix), configured, table(costs))
    assert policy.split_rows == policy.describe()["split_rows"] == split_rows
    assert ("one call" in policy.summary()) is (split_rows == 0)


def test_a_model_without_a_batch_dimension_never_splits_a_request(tiny_model: TinyModel) -> None:
    assert batch_policy.choose(tiny_model(first_dim=1), 32).split_rows == 0


@pytest.mark.parametrize(("usable_cpus", "overlap"), [(0.5, False), (1.0, False), (1.5, True), (2.0, True)])
def test_with_more_than_one_cpu_the_thread_overlaps_the_loop_and_lone_requests_are_probed(
    tiny_model: TinyModel, usable_cpus: float, overlap: bool
) -> None:
    policy = batch_policy.choose(tiny_model(), 2, table({1: 490e-6, 2: 300e-6}), usable_cpus=usable_cpus)
    assert policy.overlap is overlap
    assert policy.describe()["overlap"] is overlap
    assert ("probing for concurrency" in policy.summary()) is overlap


def test_a_size_a_burst_made_look_dear_is_climbed_past_in_a_later_round(tiny_model: TinyModel) -> None:
    """On a busy core one round can meet a burst of other work (the server's own start, a neighbour):
    the fastest of the rounds counts, and a later round climbs on where that one stopped."""
    true = {1: 10.0, 2: 5.0, 4: 2.5, 8: 1.3, 16: 0.7, 32: 0.4}
    calls: list[int] = []

    def bursty(runner: Runner, rows: int) -> float:
        calls.append(rows)
        return true[rows] * (3.0 if len(calls) == 4 else 1.0)  # the first call at 8 rows met a burst

    policy = batch_policy.choose(tiny_model(), 32, bursty)
    assert calls[:4] == [1, 2, 4, 8], "the first round stopped at the dear size"
    assert policy.max_batch_size == 32
    assert policy.seconds_per_row == true


def test_short_calls_are_climbed_past_a_size_that_looked_dear_in_every_round(tiny_model: TinyModel) -> None:
    """A server starting beside busy processes timed digits INT8's two rows at 11.9 µs a row against
    one row's 12.9, in all three rounds, and served unbatched: with calls this short a flat step is
    more likely a burst than the model, so the climb looks two sizes past it."""
    microseconds = {1: 12.9, 2: 11.9, 4: 3.7, 8: 2.3, 16: 1.5, 32: 1.2}
    policy = batch_policy.choose(tiny_model(), 32, table({k: v * 1e-6 for k, v in microseconds.items()}))
    assert policy.max_batch_size == 32
    flat_then_flat = {1: 12.9e-6, 2: 12.5e-6, 4: 12.0e-6}  # two sizes past one row, neither cheaper
    assert batch_policy.choose(tiny_model(), 32, table(flat_then_flat)).max_batch_size == 1


def test_a_flat_size_whose_call_takes_milliseconds_ends_the_climb(tiny_model: TinyModel) -> None:
    """A CNN's rows are its own work: two rows for twice one ends the climb there, and four are never
    timed (a KeyError if they were), as looking further took seconds of a load and chose from noise."""
    policy = batch_policy.choose(tiny_model(), 32, table({1: 5e-3, 2: 5.1e-3}))
    assert policy.max_batch_size == 1
    assert set(policy.seconds_per_row) == {1, 2}


def test_every_round_measures_every_size_it_reaches_and_keeps_the_fastest(tiny_model: TinyModel) -> None:
    slow_first_round = iter([2.0] * 6 + [1.0] * 12)  # a whole first round at half speed

    def measure(runner: Runner, rows: int) -> float:
        return next(slow_first_round) * {1: 10.0, 2: 5.0, 4: 2.5, 8: 1.3, 16: 0.7, 32: 0.4}[rows]

    policy = batch_policy.choose(tiny_model(), 32, measure)
    assert policy.seconds_per_row == {1: 10.0, 2: 5.0, 4: 2.5, 8: 1.3, 16: 0.7, 32: 0.4}


def test_the_logged_summary_counts_one_row_in_the_singular(tiny_model: TinyModel) -> None:
    """A CNN whose two rows cost twice one batches nothing: the start-up line said 'up to 1 rows'."""
    one = batch_policy.choose(tiny_model(), 32, table({1: 10.0, 2: 10.5})).summary()
    assert one.startswith("up to 1 row (") and "1 rows" not in one
    assert (
        batch_policy.choose(tiny_model(), 4, table({1: 10.0, 2: 5.0, 4: 2.5}))
        .summary()
        .startswith("up to 4 rows (")
    )
    mixing = batch_policy.choose(tiny_model(rows_mix=True), 4, table({1: 10.0})).summary()
    assert mixing.endswith("a larger request in calls of 1 row"), "a row a call, in words"
