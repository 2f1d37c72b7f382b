"""Quantizer benchmark: what INT8 buys on this machine, measured, not assumed.

Per variant of the sample model: file size, batch-1 p50 latency and batch-32 throughput with
onnxruntime (2 threads, the serving session options, medians of repeated runs), the gate's
accuracy delta, and the time to calibrate + quantize + gate. On CPUs without VNNI, INT8 is often
not faster than FP32; the ratio is printed as measured.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from quantship import artifact, runtime, zoo
from quantship.quantize import Mode, Precision, QuantizeConfig
from quantship.quantize import run as quantize

THREADS = 2
REPEATS = 7
BATCH1_CALLS = 2000
BATCH32_CALLS = 300


def _latency_p50_ms(session, x: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    one = x[:1]
    for _ in range(200):
        session.run(None, {"X": one})
    samples = []
    for _ in range(BATCH1_CALLS):
        start = time.perf_counter()
        session.run(None, {"X": one})
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def _throughput(session, x: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    batch = x[:32]
    rates = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(BATCH32_CALLS // REPEATS):
            session.run(None, {"X": batch})
        rates.append(32 * (BATCH32_CALLS // REPEATS) / (time.perf_counter() - start))
    return statistics.median(rates)


def run(workdir: Path) -> None:
    console = Console(width=170)
    sample = zoo.build_digits(workdir / "zoo")
    traffic = np.load(sample.requests)["X"]
    hardware = runtime.hardware()
    console.print(
        f"CPU: {hardware.cpu}; int8 flags: {', '.join(hardware.int8_flags) or 'none'}; "
        f"VNNI: {hardware.has_vnni}; onnxruntime threads: {THREADS}"
    )

    variants = {
        "static U8S8 (default)": QuantizeConfig(),
        "static S8S8": QuantizeConfig(activation_type=Precision.INT8),
        "dynamic": QuantizeConfig(mode=Mode.DYNAMIC),
    }
    fp32 = runtime.create_session(sample.model, threads=THREADS)
    fp32_p50, fp32_rate = _latency_p50_ms(fp32, traffic), _throughput(fp32, traffic)
    table = Table(
        title=f"digits MLP: FP32 {sample.model.stat().st_size / 1024:.0f} KiB, "
        f"batch-1 p50 {fp32_p50:.3f} ms, batch-32 {fp32_rate:,.0f} rows/s"
    )
    for column in (
        "variant",
        "INT8 size",
        "smaller",
        "batch-1 p50",
        "vs FP32",
        "batch-32 rows/s",
        "vs FP32",
        "accuracy delta",
        "fallback ops",
        "quantize time",
    ):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, config in variants.items():
        start = time.perf_counter()
        result = quantize(
            sample.model,
            workdir / "artifacts" / name.split()[0],
            config,
            calibration=sample.calibration,
            evaluation=sample.evaluation,
        )
        seconds = time.perf_counter() - start
        int8 = runtime.create_session(result.artifact.model_path, threads=THREADS)
        p50, rate = _latency_p50_ms(int8, traffic), _throughput(int8, traffic)
        fallback = result.artifact.manifest["fallback_ops"]
        table.add_row(
            name,
            f"{result.int8_bytes / 1024:.0f} KiB",
            f"{result.fp32_bytes / result.int8_bytes:.2f}x",
            f"{p50:.3f} ms",
            f"{fp32_p50 / p50:.2f}x",
            f"{rate:,.0f}",
            f"{rate / fp32_rate:.2f}x",
            f"{result.chosen.evaluation.delta:+.2%}",
            ", ".join(f"{op}:{n}" for op, n in fallback.items()) or "0",
            f"{seconds:.2f} s",
        )
        assert artifact.load_artifact(result.artifact.root).gate_passed
    console.print(table)
    console.print("'vs FP32' above 1.00x means INT8 is faster. Sizes include the QDQ graph overhead.")
