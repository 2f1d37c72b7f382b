"""What a canary's accuracy SLO gets to judge: FP32 comparisons a minute on an image model.

The rollout analysis needs `minSamples` comparisons (100 by default) in its short window (60 s).
A server on the stable track samples 5% of requests within 0.01 CPU seconds a second; one on the
canary track offers every request within 0.05 (`quantship.server.settings.CANARY_QUALITY`). This
suite serves the compute-heavy cell's EfficientNet-Lite0 INT8 artifact (`peers_heavy.build`) with
the default settings of each track, over gRPC (the grpcio client, one call at a time), and counts
the comparisons each makes from its `/metrics`:

- open loop at a canary's share of 60 requests a second on the first of the default steps (5%: 3 a
  second), and on the second (25%: 15 a second);
- one call at a time, back to back: a canary that has all the traffic it can take;

each over the rows of the zoo's requests the FP32 model is sure of (only those are compared: the
gate's rule) and over all 200 rows (FP32 is sure of about a fifth). The stable track's defaults are
what every canary ran before it had its own: the alternative, side by side. A canary with its own
budget raised (`--canary-sli-cpu-budget`, what the verdict's hint suggests when the budget is
short) runs the cells where the default budget, not the traffic, is short (all rows at 15 a second,
and back to back, where the CPU left idle for the nice-19 SLI thread may be shorter still). Each
cell is a fresh server, as a canary's first step is: the budget's 10 s burst is in its count.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from benchmarks import peers_heavy
from benchmarks.floor_server import MAX_MESSAGE
from benchmarks.server import scrape_sums
from quantship import agreement, artifact, zoo
from quantship.local.processes import ServerProcess
from quantship.local.prometheus import free_port
from quantship.rollout import AnalysisSpec, RolloutSpec
from quantship.slo import DropReason, Metric, SampleKind, Track

MODEL = "m"
INPUT = "images"
SECONDS = float(os.environ.get("CANARY_SECONDS", 60))
TRAFFIC = 60.0
"""Requests a second to the model, of which the first step's share goes to the canary."""
DROPPED = Metric.SAMPLES_DROPPED_TOTAL.value
DROPS = (DropReason.BUDGET, DropReason.BEHIND)
STEPS = RolloutSpec(model=MODEL, revision="", objectives=()).steps  # the default steps
FIRST_STEP_RATE, SECOND_STEP_RATE = (TRAFFIC * weight / 100 for weight in STEPS[:2])
RAISED_BUDGET = float(os.environ.get("CANARY_BUDGET", 0.2))
"""The raised canary budget (0.2: 4x the default, ~960 reference runs a minute at EfficientNet-Lite0's
~10 ms), if the nice-19 SLI thread finds that much idle CPU beside the served calls."""


@dataclass(frozen=True)
class Cell:
    requests: int
    seconds: float
    comparisons: float
    dropped: dict[DropReason, float]
    """Shadow samples dropped, by reason: `budget` (the budget refused them), `behind` (the SLI
    thread, on idle CPU only, did not keep up)."""
    load: float


def run(workdir: Path) -> None:
    console = Console(width=150)
    console.print("building EfficientNet-Lite0 and tuning its INT8 artifact ...")
    root, _ = peers_heavy.build(workdir)
    with np.load(zoo.SampleModel(peers_heavy.ZOO / peers_heavy.MODEL).requests) as requests:
        rows = requests[INPUT].astype(np.float32)
    sure = rows[_sure(root / artifact.REFERENCE_FILE, rows)]
    console.print(f"FP32 is sure of {len(sure)} of the {len(rows)} request rows")
    traffic = [
        (f"{FIRST_STEP_RATE:g} req/s, rows FP32 is sure of", sure, FIRST_STEP_RATE),
        (f"{FIRST_STEP_RATE:g} req/s, all {len(rows)} rows", rows, FIRST_STEP_RATE),
        (f"{SECOND_STEP_RATE:g} req/s, all {len(rows)} rows", rows, SECOND_STEP_RATE),
        ("one call at a time, rows FP32 is sure of", sure, None),
        (f"one call at a time, all {len(rows)} rows", rows, None),
    ]
    servers = [
        ("stable track (defaults)", Track.STABLE, ()),
        ("canary track (defaults)", Track.CANARY, ()),
        (f"canary, --canary-sli-cpu-budget {RAISED_BUDGET:g}", Track.CANARY,
         ("--canary-sli-cpu-budget", str(RAISED_BUDGET))),
    ]  # fmt: skip
    minimum = AnalysisSpec().min_samples
    table = Table(title=f"FP32 comparisons a minute, EfficientNet-Lite0 INT8 ({SECONDS:g} s a cell)")
    columns = ("server", "traffic", "req/s", "comparisons / min", f">= minSamples ({minimum})",
               "dropped / min: budget, behind", "load")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("server", "traffic") else "right")
    for server, track, flags in servers:
        for label, cell_rows, rate in traffic:
            if flags and rate == FIRST_STEP_RATE:  # short of traffic there, not of budget
                continue
            log = workdir / f"canary-samples-{track.value}{''.join(flags)}.log"
            cell = _cell(root, track, flags, log, cell_rows, rate)
            per_minute = 60 / cell.seconds
            table.add_row(
                server,
                label,
                f"{cell.requests / cell.seconds:.1f}",
                f"{cell.comparisons * per_minute:.0f}",
                "yes" if cell.comparisons * per_minute >= minimum else "no",
                ", ".join(f"{cell.dropped[reason] * per_minute:.0f}" for reason in DROPS),
                f"{cell.load:.2f}",
            )
            console.print(f"{server}, {label}: {cell}", highlight=False)
    console.print(table)


def _sure(reference: Path, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
    batches = [rows[start : start + 16] for start in range(0, len(rows), 16)]
    scores = np.concatenate([session.run(None, {INPUT: batch})[0] for batch in batches])
    return agreement.confident(scores)


def _cell(
    root: Path, track: Track, flags: tuple[str, ...], log: Path, rows: np.ndarray, rate: float | None
) -> Cell:
    port = free_port()
    server = ServerProcess(
        root,
        model=MODEL,
        revision=track.value,
        track=track.value,
        extra_args=["--threads", str(peers_heavy.THREADS), "--grpc-port", str(port), *flags],
        log_path=log,
    )
    server.start()
    compared = Metric.SHADOW_COMPARISONS_TOTAL.value
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    try:
        asyncio.run(server.wait_ready())
        payloads = [peers_heavy.grpc_request(MODEL, INPUT, row[None]) for row in rows]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            infer = channel.unary_unary(peers_heavy.INFER)
            for payload in payloads[: peers_heavy.WARMUP_CALLS]:
                infer(payload, timeout=60)
            time.sleep(1)  # the warm-up's samples are counted before the cell starts
            (before,) = scrape_sums(server.url, compared)
            dropped_before = _dropped(server.url)
            sent, started = 0, time.monotonic()
            while (now := time.monotonic()) - started < SECONDS:
                if rate is not None and (due := started + sent / rate) > now:
                    time.sleep(due - now)
                infer(payloads[sent % len(payloads)], timeout=60)
                sent += 1
            seconds = time.monotonic() - started
        time.sleep(1)  # the lane's last hand-off
        (after,) = scrape_sums(server.url, compared)
        dropped = {reason: n - dropped_before[reason] for reason, n in _dropped(server.url).items()}
    finally:
        server.stop()
    return Cell(sent, seconds, after - before, dropped, os.getloadavg()[0])


def _dropped(url: str) -> dict[DropReason, float]:
    return {reason: scrape_sums(url, DROPPED, kind=SampleKind.SHADOW, reason=reason)[0] for reason in DROPS}
