"""Capture: a uniform sample of production inputs, on disk, in the calibration-data format.

`quantship serve --capture-dir DIR` keeps a reservoir (Algorithm R) of the rows it served: every
row seen so far has the same chance, capacity / rows seen, to be in it. `quantship quantize
--calibration DIR/capture.npz` reads the file as it reads any calibration data (an .npz keyed by
input name, samples along the first axis), so "drift alert, recalibrate, canary" is one loop.

Work is split as the SLI lanes split it. On the response path `Reservoir.choose` draws one random
number per row and copies nothing; the rows it picks go to the capture lane, whose thread stores them
(`Capture.process`) and writes the file at most every `flush_s` seconds (the service asks the same
thread every `flush_s` to write what is due, so rows reach the file after traffic stops), and at
shutdown, to a temporary file renamed over the old one, so a reader never sees half a file. That
thread is the capture's own, at normal priority: storing a row takes microseconds (MiniLM's 5-7 µs,
an EfficientNet-Lite0 image's 0.1-0.4 ms), and on the SLI lanes' SCHED_IDLE thread a host busy with
other work let it fall behind by hundreds of rows, a reservoir of whatever the host's load let in.
A full lane still drops the pick and counts it (`quantship_samples_dropped_total{kind="capture"}`),
as do rows whose shape differs from the first one kept (a token model's other sequence lengths: one
array cannot hold them).

Memory is bounded: capacity = min(max samples, max bytes / bytes of one sample), held as one array
per input of `capacity` samples (no object per sample: kept as dicts of rows, 256 bytes of digits
took 636 held and 4.2x --capture-max-bytes while writing), written from slices of them. Each process
starts a fresh reservoir and replaces the file. The inputs are production data: off unless asked for.
A write that fails (the directory gone, the disk full) is logged, retried `flush_s` later, and the
samples kept; temporary files a killed server left are swept at the next start.

Each write is the whole reservoir, but a full one changes less and less: after N rows a new row
enters with chance capacity / N, so an hour of EfficientNet-Lite0 at 20 requests a second rewrote its
128 MiB every 30 s for ~2 changed rows. A periodic write therefore waits until a share of the rows
held changed since the last one (`REWRITE_SHARE`), or `MAX_SKIPPED_FLUSHES` periods went by with a
change unwritten; the first write, and the last at shutdown, are never skipped. The rows changed grow
with the log of the rows served, so the writes do too, and the skip bound caps a change's wait.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantship.server.runner_signature import Signature, Tensors

log = logging.getLogger("quantship.server")
CAPTURE_FILE = "capture.npz"


TEMPORARY_PREFIX = ".capture-"
STALE_TEMPORARY_S = 600.0
"""A temporary capture file older than this is a killed writer's (kill -9, OOM): a write takes
seconds. Younger ones may be another live server's, sharing the directory."""

REWRITE_SHARE = 0.1
"""A periodic write waits until this share of the rows held changed since the last one. The rows are
random draws from the same traffic: a file that lacks a tenth of the reservoir's newest draws holds
nine tenths of it and the older draws they replaced, as fair a sample for calibration ranges. At a
steady rate the changed rows grow by capacity * ln(t2 / t1) from time t1 to t2: a tenth is a write
each time serving time grows by 10.5%, ~7 in the second hour (`MAX_SKIPPED_FLUSHES` adds more)."""
MAX_SKIPPED_FLUSHES = 9
"""Periods a change may stay unwritten for want of `REWRITE_SHARE`: the tenth writes it anyway, so a
row reaches the file within 10 * --capture-flush-s (5 min at the default 30 s), and a trickle of
changes, a row every period or less, costs a tenth of the writes at most: EfficientNet-Lite0 at 20
requests a second, its 128 MiB reservoir full, wrote 12 times in its second hour, not 86
(benchmarks/capture_writes.py). The period stays the one knob: shorter is fresher."""


def describe_cap(max_samples: int, max_bytes: int, sample_bytes: int) -> str:
    """What the caps mean for samples of `sample_bytes`: the reservoir's size, and which cap sets it
    (1000 samples at most, by default, but 128 MiB hold ~222 EfficientNet-Lite0 images)."""
    capacity = reservoir_capacity(max_samples, max_bytes, sample_bytes)
    by_samples = capacity == max_samples
    limit = f"--capture-max-samples {max_samples}" if by_samples else f"--capture-max-bytes {max_bytes}"
    return f"at most {capacity} samples of {sample_bytes} bytes ({limit} sets it)"


def reservoir_capacity(max_samples: int, max_bytes: int, sample_bytes: int) -> int:
    return max(0, min(max_samples, max_bytes // max(1, sample_bytes)))


def fixed_sample_bytes(signature: Signature) -> int | None:
    """Bytes of one sample where the model fixes every dimension of it; None where one is open (a
    token model's sequence length): the first row served sets it then."""
    total = 0
    for spec in signature.inputs:
        dims = spec.shape[1:] if signature.batchable else spec.shape
        fixed = [dim for dim in dims if dim is not None]
        if len(fixed) < len(dims):
            return None
        total += math.prod(fixed) * spec.dtype.itemsize
    return total


@dataclass(frozen=True)
class CapturePick:
    inputs: Tensors
    picks: tuple[tuple[int, int], ...]
    """(row of the request, reservoir slot) pairs; for an unbatchable model row 0 is the request."""
    capacity: int
    """The reservoir's slots: what the arrays holding them are sized for."""


class Reservoir:
    """The response path's half: which rows enter, in which slot. Cheap and never blocking."""

    def __init__(self, signature: Signature, max_samples: int, max_bytes: int, rng: random.Random) -> None:
        self.batchable = signature.batchable
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.rng = rng
        self.seen = 0
        self.capacity: int | None = None
        self.layout: tuple[tuple[str, str, tuple[int, ...]], ...] | None = None
        self.fixed_sample_bytes = fixed_sample_bytes(signature)

    def describe(self) -> str:
        """The cap for this model's samples where its inputs fix their size; both caps otherwise."""
        if self.fixed_sample_bytes is None:
            return (
                f"at most {self.max_samples} samples, {self.max_bytes} bytes: the first row served sets"
                " a sample's size, and the cap"
            )
        return describe_cap(self.max_samples, self.max_bytes, self.fixed_sample_bytes)

    def _sample_layout(self, inputs: Tensors) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        return tuple(
            (name, array.dtype.str, array.shape[1:] if self.batchable else array.shape)
            for name, array in sorted(inputs.items())
        )

    def choose(self, inputs: Tensors, rows: int) -> tuple[tuple[int, int], ...] | None:
        """The (row, slot) pairs that enter the reservoir; None when the request's sample shape differs
        from the reservoir's (not capturable)."""
        layout = self._sample_layout(inputs)
        if self.layout is None:
            self.layout = layout
            sample_bytes = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for _, dtype, shape in layout)
            self.capacity = reservoir_capacity(self.max_samples, self.max_bytes, sample_bytes)
            if not self.capacity:
                log.warning(
                    "capture: one sample (%d bytes) exceeds --capture-max-bytes; capturing nothing",
                    sample_bytes,
                )
            elif self.fixed_sample_bytes is None:  # the startup line could not say
                log.info("capture: %s", describe_cap(self.max_samples, self.max_bytes, sample_bytes))
        elif layout != self.layout:
            return None
        assert self.capacity is not None
        picks = []
        for row in range(rows if self.batchable else 1):
            self.seen += 1
            if self.seen <= self.capacity:
                picks.append((row, self.seen - 1))
            else:
                slot = self.rng.randrange(self.seen)
                if slot < self.capacity:
                    picks.append((row, slot))
        return tuple(picks)


class Capture:
    """The background half: stores picked rows and writes DIR/capture.npz atomically."""

    def __init__(self, directory: Path, flush_s: float, *, batchable: bool) -> None:
        self.directory = directory
        self.flush_s = flush_s
        self.batchable = batchable
        self.arrays: dict[str, np.ndarray] | None = None
        """One array per input, a sample per reservoir slot (allocated at the first pick)."""
        self.held: np.ndarray | None = None
        """Which slots hold a sample. The reservoir fills them in order, but a hand-off the lane
        dropped (full, or at shutdown) leaves a hole: its row is uninitialised memory, never written."""
        self.changed = 0
        """Rows stored since the last write: what the file lacks."""
        self.written = False
        """Whether this process wrote the file yet (its first write is never skipped)."""
        self.skipped = 0
        """Periodic writes skipped in a row since the last write, for want of `REWRITE_SHARE`."""
        self._checked_at = time.monotonic()

    @property
    def path(self) -> Path:
        return self.directory / CAPTURE_FILE

    @staticmethod
    def prepare(directory: Path) -> None:
        """Create the directory, check it is writable (an unusable --capture-dir refuses the load),
        and remove the temporary files killed writers left there."""
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
        stale = time.time() - STALE_TEMPORARY_S
        for leftover in directory.glob(f"{TEMPORARY_PREFIX}*.tmp"):
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
                if leftover.stat().st_mtime < stale:
                    leftover.unlink()
                    log.info("capture: removed %s, left by a server killed while writing", leftover)

    def process(self, items: list[CapturePick]) -> None:
        """Blocking: called in the background thread by the capture lane."""
        for item in items:
            arrays = self.arrays if self.arrays is not None else self._allocate(item)
            assert self.held is not None
            for row, slot in item.picks:
                for name, array in item.inputs.items():
                    arrays[name][slot] = array[row] if self.batchable else array
                self.held[slot] = True
            self.changed += len(item.picks)
        if self.changed and time.monotonic() - self._checked_at >= self.flush_s:
            self.flush_due()

    def flush_due(self) -> None:
        """The periodic write, every `flush_s`: skipped while few rows changed (`REWRITE_SHARE`), for
        `MAX_SKIPPED_FLUSHES` periods at most. Never with `flush_s` 0, which asks for every change
        written as it comes (and has no periodic call to write a skipped one once traffic stops)."""
        self._checked_at = time.monotonic()
        if not self.changed or self.held is None:
            return
        held = int(np.count_nonzero(self.held))
        few = self.changed < REWRITE_SHARE * held
        if few and self.written and self.flush_s > 0 and self.skipped < MAX_SKIPPED_FLUSHES:
            self.skipped += 1
            log.debug("capture: %d of %d rows changed; write skipped", self.changed, held)
            return
        self.flush()

    def _allocate(self, item: CapturePick) -> dict[str, np.ndarray]:
        self.held = np.zeros(item.capacity, dtype=bool)
        self.arrays = {
            name: np.empty(
                (item.capacity, *(array.shape[1:] if self.batchable else array.shape)), array.dtype
            )
            for name, array in item.inputs.items()
        }
        return self.arrays

    def flush(self, *, final: bool = False) -> None:
        """Write what the reservoir holds, if anything changed since the last write, however little:
        temp file, fsync, rename. A failure is logged and retried `flush_s` later (the samples stay);
        the `final` one, at shutdown, raises."""
        if not self.changed or self.arrays is None or self.held is None:
            return
        count = int(np.count_nonzero(self.held))
        if not count:
            return
        self._checked_at = time.monotonic()
        # slices while the slots are filled without a hole (no copy); the held rows otherwise
        whole = bool(self.held[:count].all())
        samples = {name: array[:count] if whole else array[self.held] for name, array in self.arrays.items()}
        try:
            self._write(samples)
        except OSError as exc:
            if final:
                raise
            log.warning(
                "capture: could not write %s (%s); trying again in %g s", self.path, exc, self.flush_s
            )
            return
        self.changed, self.skipped, self.written = 0, 0, True
        log.debug("capture: wrote %d samples to %s", count, self.path)

    def _write(self, arrays: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)  # removed while serving: made again
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, prefix=TEMPORARY_PREFIX, suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
