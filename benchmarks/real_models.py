"""Real-model benchmark: the tuner on EfficientNet-Lite0 and all-MiniLM-L6-v2, measured on this CPU.

Per model and tuning run: FP32 vs INT8 file size, batch-1 p50 latency and batch-32 throughput
(onnxruntime, 2 threads, the serving session options; a dynamically quantized model's 32 rows a row a
call, as the server runs them), every gate metric, the trials the tuner
ran, its wall time and peak RSS. Beside the tuned artifact stands what a user gets from plain
onnxruntime defaults (the tuner's first trial: per-tensor, U8S8, minmax), measured the same way.

The models come from `quantship zoo build build/zoo --model ...` (torch in .venv-export/, built
on demand like `make real-models`). Each quantization runs the CLI in its own process, so the
peak RSS it records is the tuner's alone.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from quantship import runtime
from quantship.zoo import SampleModel

ZOO = Path(__file__).resolve().parents[1] / "build" / "zoo"
"""The zoo `make real-models` builds, at the repository root whatever the working directory."""
THREADS = 2
BATCH1_CALLS = 60
BATCH32_REPEATS = 3

RUNS: list[tuple[str, str, list[str]]] = [
    ("efficientnet-lite0", "static, tuned (defaults)", []),
    ("minilm-l6", "dynamic, tuned", ["--mode", "dynamic"]),
    ("minilm-l6", "static first, tuned", []),
]


def _inputs(sample: SampleModel, rows: int) -> dict[str, np.ndarray]:
    with np.load(sample.requests) as data:
        return {name: data[name][:rows] for name in data.files}


def _latency_p50_ms(model: Path, sample: SampleModel) -> float:
    session = runtime.create_session(model, threads=THREADS)
    one = _inputs(sample, 1)
    for _ in range(5):
        session.run(None, one)
    samples = []
    for _ in range(BATCH1_CALLS):
        start = time.perf_counter()
        session.run(None, one)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def _throughput(model: Path, sample: SampleModel) -> float:
    """Rows a second of a 32-row request, run as the server runs it: in one call, or a row a call
    where the model's rows mix (dynamic quantization: batch_policy.ROWS_MIX)."""
    session = runtime.create_session(model, threads=THREADS)
    batch = _inputs(sample, 32)
    calls = [{name: value[i : i + 1] for name, value in batch.items()} for i in range(32)]
    if not runtime.rows_mix(model):
        calls = [batch]
    session.run(None, calls[0])
    rates = []
    for _ in range(BATCH32_REPEATS):
        start = time.perf_counter()
        for call in calls:
            session.run(None, call)
        rates.append(32 / (time.perf_counter() - start))
    return statistics.median(rates)


def _quantize(sample: SampleModel, out: Path, extra: list[str]) -> tuple[dict[str, Any], float, int]:
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantship",
            "quantize",
            str(sample.model),
            "-o",
            str(out),
            "--calibration",
            str(sample.calibration),
            "--evaluation",
            str(sample.evaluation),
            "-q",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(f"quantize {sample.root.name} failed:\n{result.stderr}")
    return json.loads((out / "manifest.json").read_text()), seconds, result.returncode


def _metrics(values: dict[str, Any]) -> str:
    return ", ".join(
        f"{name} {value:.3f}"
        for name, value in values.items()
        if value is not None and name != "confident_rows"
    )


def run(workdir: Path) -> None:
    console = Console(width=200)
    models = ["--model", "efficientnet-lite0", "--model", "minilm-l6"]
    subprocess.run([sys.executable, "-m", "quantship", "zoo", "build", str(ZOO), *models], check=True)
    hardware = runtime.hardware()
    console.print(
        f"CPU: {hardware.cpu}; int8 flags: {', '.join(hardware.int8_flags) or 'none'}; "
        f"VNNI: {hardware.has_vnni}; onnxruntime threads: {THREADS}"
    )
    table = Table(title="real models: FP32 vs the tuned INT8 artifact vs onnxruntime's defaults (trial 0)")
    for column in (
        "model, run",
        "variant",
        "size",
        "b1 p50 ms",
        "b32 rows/s",
        "gate",
        "metrics vs FP32",
        "trials",
        "tune s",
        "peak RSS MB",
    ):
        table.add_column(
            column, justify="left" if column in ("model, run", "variant", "metrics vs FP32") else "right"
        )
    for name, label, extra in RUNS:
        sample = SampleModel(ZOO / name)
        out = workdir / "real" / f"{name}-{len(extra)}"
        manifest, seconds, _ = _quantize(sample, out, extra)
        int8 = out / "model.onnx"
        validation, tuning, trials = manifest["validation"], manifest["tuning"], manifest["trials"]
        table.add_row(
            f"{name}: {label}",
            "FP32",
            f"{sample.model.stat().st_size / 2**20:.1f} MiB",
            f"{_latency_p50_ms(sample.model, sample):.2f}",
            f"{_throughput(sample.model, sample):,.0f}",
            "-",
            "-",
            "-",
            "-",
            "-",
        )
        first = trials[0]
        table.add_row(
            "",
            f"ORT defaults: {first['recipe']}",
            "",
            "",
            "",
            "pass" if first["passed"] else "FAIL",
            _metrics(first.get("metrics") or {}),
            "",
            "",
            "",
        )
        table.add_row(
            "",
            f"tuned: {trials[tuning['chosen']]['recipe']}",
            f"{int8.stat().st_size / 2**20:.1f} MiB",
            f"{_latency_p50_ms(int8, sample):.2f}",
            f"{_throughput(int8, sample):,.0f}",
            f"{validation['gate']} ({validation['metric']} {validation['value']:.3f})",
            _metrics(validation["metrics"]),
            str(len(trials)),
            f"{seconds:.1f}",
            f"{tuning['peak_rss_mb']:.0f}",
        )
    console.print(table)
    console.print(
        "Gate: confident_agreement for unlabelled classifiers (top-1 kept on rows where FP32 is > 50% sure), "
        "cosine_agreement for embeddings (rows with cosine >= 0.95). 'tune s' is the whole CLI run: load, "
        "calibrate, every trial, artifact."
    )
