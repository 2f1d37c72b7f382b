"""The capture's reservoir (uniform over every row served, bounded by samples and bytes) and its file
(atomic, and calibration data as `quantship quantize` reads it)."""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from tiny_models import TinyModel, build_plus_one

from quantship.quantize.data import load_dataset, model_inputs
from quantship.server.capture import (
    CAPTURE_FILE,
    MAX_SKIPPED_FLUSHES,
    REWRITE_SHARE,
    STALE_TEMPORARY_S,
    Capture,
    CapturePick,
    Reservoir,
)


def test_the_reservoir_keeps_a_uniform_sample_of_every_row_served(tiny_model: TinyModel) -> None:
    reservoir = Reservoir(tiny_model().signature, 100, 1 << 20, random.Random(7))
    kept: dict[int, int] = {}
    for request in range(100):  # 10,000 rows in requests of 100
        rows = np.arange(request * 100, (request + 1) * 100, dtype=np.float32)
        picks = reservoir.choose({"X": np.repeat(rows[:, None], 3, axis=1)}, 100)
        assert picks is not None
        for row, slot in picks:
            kept[slot] = request * 100 + row
    assert sorted(kept) == list(range(100))
    # uniform over 0..9999: mean 5000 (standard error ~290), half of them from the second half
    assert abs(np.mean(list(kept.values())) - 5000) < 1000
    assert 30 <= sum(index >= 5000 for index in kept.values()) <= 70


def test_the_byte_budget_caps_the_reservoir(tiny_model: TinyModel) -> None:
    reservoir = Reservoir(tiny_model().signature, 1000, 10 * 12, random.Random(1))  # 3 float32 a row
    picks = reservoir.choose({"X": np.zeros((50, 3), dtype=np.float32)}, 50)
    assert reservoir.capacity == 10
    assert picks is not None and {slot for _, slot in picks} == set(range(10))


def test_rows_of_another_shape_are_not_capturable(tiny_model: TinyModel) -> None:
    reservoir = Reservoir(tiny_model(width="W").signature, 10, 1 << 20, random.Random(1))
    assert reservoir.choose({"X": np.zeros((2, 3), dtype=np.float32)}, 2) == ((0, 0), (1, 1))
    assert reservoir.choose({"X": np.zeros((2, 4), dtype=np.float32)}, 2) is None


def test_the_file_is_written_whole_and_reads_as_calibration_data(tmp_path: Path) -> None:
    model = onnx.load(build_plus_one(tmp_path / "plus-one.onnx"))
    directory = tmp_path / "capture"
    Capture.prepare(directory)
    capture = Capture(directory, flush_s=3600, batchable=True)
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    capture.process([CapturePick({"X": rows}, ((0, 0), (2, 1), (3, 2)), capacity=3)])
    assert not (directory / CAPTURE_FILE).exists()  # within the flush interval: not yet written
    capture.flush()
    capture.process([CapturePick({"X": rows + 100}, ((1, 1),), capacity=3)])  # replaces slot 1
    capture.flush()
    assert sorted(p.name for p in directory.iterdir()) == [CAPTURE_FILE]  # no temporary file left
    data = load_dataset(directory / CAPTURE_FILE, model_inputs(model), role="calibration")
    assert data.stacked and data.size == 3
    np.testing.assert_array_equal(data.arrays["X"], np.stack([rows[0], rows[1] + 100, rows[3]]))


def test_the_capture_holds_its_samples_in_arrays_of_its_capacity(tmp_path: Path) -> None:
    """No object per sample: 256 bytes of digits were held as 636, and written with a full copy more."""
    capture = Capture(tmp_path, flush_s=3600, batchable=True)
    rows = np.ones((5, 64), dtype=np.float32)

    capture.process([CapturePick({"X": rows}, tuple((row, row) for row in range(5)), capacity=1000)])

    assert capture.arrays is not None and capture.arrays["X"].shape == (1000, 64)
    assert capture.arrays["X"].nbytes == 1000 * 64 * 4
    assert capture.held is not None and int(capture.held.sum()) == 5


def test_a_capture_directory_removed_while_serving_is_made_again_and_a_failed_write_waits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="quantship.server")
    directory = tmp_path / "capture"
    Capture.prepare(directory)
    capture = Capture(directory, flush_s=0, batchable=True)
    pick = CapturePick({"X": np.ones((1, 3), dtype=np.float32)}, ((0, 0),), capacity=4)
    directory.rmdir()

    capture.process([pick])  # flush_s 0: written at once
    assert (directory / CAPTURE_FILE).is_file()

    capture.directory = tmp_path / "a-file" / "capture"  # cannot be made: a file is in the way
    (tmp_path / "a-file").write_text("")
    capture.flush_s = 3600
    capture.changed = 1
    capture.flush()
    capture.process([pick])  # within flush_s of the failure: not tried again, nothing raised

    assert capture.changed and len(caplog.records) == 1 and "could not write" in caplog.text


def test_a_killed_writers_temporary_file_is_removed_at_the_next_start(tmp_path: Path) -> None:
    stale = tmp_path / ".capture-k1ll3d.tmp"
    fresh = tmp_path / ".capture-wr1t1ng.tmp"  # another live server's, writing now
    for leftover in (stale, fresh):
        leftover.write_bytes(b"PK\x03\x04 half a file")
    old = time.time() - 2 * STALE_TEMPORARY_S
    os.utime(stale, (old, old))

    Capture.prepare(tmp_path)

    assert not stale.exists() and fresh.exists()


def test_a_slot_whose_hand_off_was_dropped_is_not_written_as_a_sample(tmp_path: Path) -> None:
    """The lane drops a full hand-off (or the queue at shutdown): slot 1 never held a row, and writing
    slots 0 to 2 put a row of uninitialised memory in the recalibration data."""
    model = onnx.load(build_plus_one(tmp_path / "plus-one.onnx"))
    capture = Capture(tmp_path, flush_s=3600, batchable=True)
    rows = np.arange(9, dtype=np.float32).reshape(3, 3) + 1
    capture.process([CapturePick({"X": rows[:1]}, ((0, 0),), capacity=4)])
    capture.process([CapturePick({"X": rows[2:]}, ((0, 2),), capacity=4)])  # slot 1's hand-off was dropped

    capture.flush()

    data = load_dataset(tmp_path / CAPTURE_FILE, model_inputs(model), role="calibration")
    np.testing.assert_array_equal(data.arrays["X"], rows[[0, 2]])


def test_the_last_write_at_shutdown_says_it_failed(tmp_path: Path) -> None:
    capture = Capture(tmp_path / "a-file" / "capture", flush_s=3600, batchable=True)
    (tmp_path / "a-file").write_text("")
    capture.process([CapturePick({"X": np.ones((1, 3), dtype=np.float32)}, ((0, 0),), capacity=2)])

    with pytest.raises(OSError):
        capture.flush(final=True)


def test_the_cap_is_told_for_this_models_samples_where_its_inputs_fix_their_size(
    tiny_model: TinyModel,
) -> None:
    """The log said "at most 1000 samples, 134217728 bytes" where 128 MiB hold ~222 of EfficientNet's
    images: the sample cap that holds is the one told. A row of X here is 3 float32, 12 bytes."""
    signature = tiny_model().signature
    assert Reservoir(signature, 1000, 10 * 12, random.Random(1)).describe() == (
        "at most 10 samples of 12 bytes (--capture-max-bytes 120 sets it)"
    )
    assert Reservoir(signature, 5, 1 << 20, random.Random(1)).describe() == (
        "at most 5 samples of 12 bytes (--capture-max-samples 5 sets it)"
    )
    unbatchable = Reservoir(tiny_model(first_dim=1).signature, 1000, 10 * 12, random.Random(1))
    assert unbatchable.describe().startswith("at most 10 samples of 12 bytes")  # the whole request


def test_an_open_sample_size_is_told_with_its_cap_once_the_first_row_sets_it(
    tiny_model: TinyModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quantship.server")
    reservoir = Reservoir(tiny_model(width="W").signature, 1000, 10 * 16, random.Random(1))
    assert "the first row served sets" in reservoir.describe()
    reservoir.choose({"X": np.zeros((2, 4), dtype=np.float32)}, 2)
    reservoir.choose({"X": np.zeros((2, 4), dtype=np.float32)}, 2)
    assert [record.getMessage() for record in caplog.records] == [
        "capture: at most 10 samples of 16 bytes (--capture-max-bytes 160 sets it)"
    ]


EVERY_CALL_DUE = 1e-9
"""A flush period every call outlasts: each `process`, as the service's flusher calls it, is due."""


def full_capture(directory: Path, capacity: int) -> tuple[Capture, np.ndarray]:
    """A capture of `capacity` distinct rows, written once (the first write is never skipped)."""
    capture = Capture(directory, flush_s=EVERY_CALL_DUE, batchable=True)
    rows = np.arange(capacity * 3, dtype=np.float32).reshape(capacity, 3)
    capture.process([CapturePick({"X": rows}, tuple((row, row) for row in range(capacity)), capacity)])
    np.testing.assert_array_equal(np.load(directory / CAPTURE_FILE)["X"], rows)
    return capture, rows


def replace_rows(capture: Capture, slots: range, capacity: int) -> np.ndarray:
    """New rows (negative: unlike any first one) in `slots`, as the reservoir replaces them."""
    rows = -np.ones((len(slots), 3), dtype=np.float32) * np.arange(1, len(slots) + 1)[:, None]
    capture.process([CapturePick({"X": rows}, tuple(enumerate(slots)), capacity)])
    return rows


def test_a_periodic_write_waits_while_few_of_the_rows_changed(tmp_path: Path) -> None:
    """A full reservoir changes a row now and then (capacity / rows served): every period rewrote all
    of it, 128 MiB of EfficientNet-Lite0 images every 30 s for ~2 new rows an hour into 20 req/s."""
    capacity = 40
    few = int(REWRITE_SHARE * capacity) - 1
    capture, rows = full_capture(tmp_path, capacity)

    replace_rows(capture, range(few), capacity)  # a period with fewer changed than the share: skipped
    np.testing.assert_array_equal(np.load(tmp_path / CAPTURE_FILE)["X"], rows)

    new = replace_rows(capture, range(few, few + 1), capacity)  # the share reached: written
    written = np.load(tmp_path / CAPTURE_FILE)["X"]
    np.testing.assert_array_equal(written[few], new[0])
    assert capture.changed == 0 and capture.skipped == 0


def test_a_change_too_small_to_write_is_written_after_the_most_periods_skipped(tmp_path: Path) -> None:
    """The share alone let a trickle of changes wait for hours: it is written within
    MAX_SKIPPED_FLUSHES + 1 periods, as the service's flusher calls them with no traffic."""
    capacity = 40
    capture, rows = full_capture(tmp_path, capacity)
    new = replace_rows(capture, range(1), capacity)  # period 1, skipped

    for _ in range(MAX_SKIPPED_FLUSHES - 1):
        capture.process([])  # the flusher's call: periods 2 to MAX_SKIPPED_FLUSHES
    np.testing.assert_array_equal(np.load(tmp_path / CAPTURE_FILE)["X"], rows)
    capture.process([])

    np.testing.assert_array_equal(np.load(tmp_path / CAPTURE_FILE)["X"][0], new[0])


def test_the_write_at_shutdown_holds_every_change_however_few(tmp_path: Path) -> None:
    """Never lose the final state: the rows a skipped period left out are in the last write."""
    capacity = 40
    capture, rows = full_capture(tmp_path, capacity)
    new = replace_rows(capture, range(1), capacity)
    np.testing.assert_array_equal(np.load(tmp_path / CAPTURE_FILE)["X"], rows)  # skipped

    capture.flush(final=True)

    np.testing.assert_array_equal(np.load(tmp_path / CAPTURE_FILE)["X"], np.concatenate([new, rows[1:]]))


def test_with_no_flush_period_every_change_is_written_as_it_comes(tmp_path: Path) -> None:
    """--capture-flush-s 0 has no periodic flusher to write a skipped change once traffic stops."""
    capture, _ = full_capture(tmp_path, 40)
    capture.flush_s = 0

    new = replace_rows(capture, range(1), 40)

    np.testing.assert_array_equal(np.load(tmp_path / CAPTURE_FILE)["X"][0], new[0])
