"""Capture: a uniform sample of production inputs, on disk, in the calibration-data format.

`quantship serve --capture-dir DIR` keeps a reservoir (Algorithm R) of the rows it served: every
row seen so far has the same chance, capacity / rows seen, to be in it. `quantship quantize
--calibration DIR/capture.npz` reads the file as it reads any calibration data (an .npz keyed by
input name, samples along the first axis), so "drift alert, recalibrate, canary" is one loop.

Work is split as the SLI lanes split it. On the response path `Reservoir.choose` draws one random
number per row and copies nothing; the rows it picks go to the capture lane, whose background thread
stores them (`Capture.process`) and writes the file at most every `flush_s` seconds and at shutdown,
to a temporary file renamed over the old one, so a reader never sees half a file. A full lane drops
the pick and counts it (`quantship_samples_dropped_total{kind="capture"}`), as do rows whose shape
differs from the first one kept (a token model's other sequence lengths: one array cannot hold them).

Memory is bounded: capacity = min(max samples, max bytes / bytes of one sample). Each process starts
a fresh reservoir and replaces the file. The inputs are production data: off unless asked for.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantship.server.runner import Signature, Tensors

log = logging.getLogger("quantship.server")
CAPTURE_FILE = "capture.npz"


@dataclass(frozen=True)
class CapturePick:
    inputs: Tensors
    picks: tuple[tuple[int, int], ...]
    """(row of the request, reservoir slot) pairs; for an unbatchable model row 0 is the request."""


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
            self.capacity = max(0, min(self.max_samples, self.max_bytes // max(1, sample_bytes)))
            if not self.capacity:
                log.warning(
                    "capture: one sample (%d bytes) exceeds --capture-max-bytes; capturing nothing",
                    sample_bytes,
                )
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
        self.slots: dict[int, dict[str, np.ndarray]] = {}
        self.dirty = False
        self._written_at = time.monotonic()

    @property
    def path(self) -> Path:
        return self.directory / CAPTURE_FILE

    @staticmethod
    def prepare(directory: Path) -> None:
        """Create the directory and check it is writable: an unusable --capture-dir refuses the load."""
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass

    def process(self, items: list[CapturePick]) -> None:
        """Blocking: called in the background thread by the capture lane."""
        for item in items:
            for row, slot in item.picks:
                self.slots[slot] = {
                    name: (array[row] if self.batchable else array).copy()
                    for name, array in item.inputs.items()
                }
        self.dirty = self.dirty or bool(items)
        if self.dirty and time.monotonic() - self._written_at >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write what the reservoir holds, if anything changed: temp file, fsync, rename."""
        if not self.dirty or not self.slots:
            return
        kept = [self.slots[slot] for slot in sorted(self.slots)]
        arrays: dict[str, Any] = {name: np.stack([sample[name] for sample in kept]) for name in kept[0]}
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, prefix=".capture-", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self.dirty = False
        self._written_at = time.monotonic()
        log.debug("capture: wrote %d samples to %s", len(kept), self.path)
